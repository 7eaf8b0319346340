"""Real Prometheus Alertmanager → a real Keyturn server, end to end.

An alert posted to Alertmanager reaches ``POST /v1/webhooks/alertmanager`` with the credentials
of Alertmanager's ``http_config``, becomes the fact ``target.alerting`` for the mapped target
and opens the ``oncall-incident`` rule for alice (on call for the ``database`` schedule in the
example calendar); its resolution closes it again. Wrong credentials store nothing and are
counted. Everything is polled with a deadline: Alertmanager sends a new alert within tens of
milliseconds and a resolution within about a second (``lab.ALERTMANAGER_ROUTE_TIMINGS``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keyturn import bootstrap, lab
from keyturn.entrypoints.server import Server
from tests.conftest import TOKENS, example_data, load

pytestmark = pytest.mark.integration

TOKEN = "am-bearer-2f9c41"
USER, PASSWORD = "alertmanager", "am-basic-d07e"
DEADLINE = 20.0  # seconds to wait for a notification to take effect
LABELS = {"alertname": "PostgresPrimaryDown", "instance": "db-1:9187", "severity": "critical"}
T = TypeVar("T")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Keyturn:
    """A live Keyturn server (API and worker) and an HTTP client for it."""

    def __init__(self, tmp_path: Path) -> None:
        data = example_data(tmp_path)
        data["alerts"]["bearer_token_sha256"] = _sha256(TOKEN)
        data["alerts"]["basic"] = {"username": USER, "password_sha256": _sha256(PASSWORD)}
        self.app = bootstrap.build(load(data))
        port = lab.free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.webhook_url = f"{self.url}/v1/webhooks/alertmanager"
        self.server = Server(self.app, "127.0.0.1", port)
        self.server.start()
        self.http = httpx.Client(base_url=self.url, trust_env=False, timeout=5.0)

    def get(self, user: str, path: str, **params: Any) -> Any:
        """GET as ``user``; the JSON of a 200 answer."""
        headers = {"Authorization": f"Bearer {TOKENS[user]}"}
        response = self.http.get(path, params=params, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()

    def alerts(self, **params: Any) -> list[dict[str, Any]]:
        """``GET /v1/alerts`` as alice."""
        items: list[dict[str, Any]] = self.get("alice", "/v1/alerts", **params)["items"]
        return items

    def explain(self, user: str = "alice") -> dict[str, Any]:
        """``POST /v1/policy/explain``: db-admin on db-1 for an hour, for ``user``."""
        body = {"role": "db-admin", "target": "db-1", "duration": "PT1H"}
        headers = {"Authorization": f"Bearer {TOKENS[user]}"}
        response = self.http.post("/v1/policy/explain", json=body, headers=headers)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def metric(self, name: str, **labels: str) -> float:
        """One sample of ``/metrics`` (0 when that series does not exist yet)."""
        for family in text_string_to_metric_families(self.http.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    def close(self) -> None:
        self.http.close()
        self.server.stop()
        self.app.close()


@pytest.fixture
def keyturn(tmp_path: Path) -> Iterator[Keyturn]:
    server = Keyturn(tmp_path / "keyturn")
    yield server
    server.close()


@pytest.fixture
def start_alertmanager(tmp_path: Path) -> Iterator[Callable[..., lab.Alertmanager]]:
    """Start a lab Alertmanager sending to a webhook URL with the given credentials."""
    started: list[lab.Alertmanager] = []

    def start(url: str, **credentials: Any) -> lab.Alertmanager:
        server = lab.Alertmanager(tmp_path / "alertmanager", url, **credentials)
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


def poll(check: Callable[[], T | None], what: str, am: lab.Alertmanager) -> T:
    """The first truthy result of ``check``, polled until :data:`DEADLINE` (then fail with
    Alertmanager's log)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE}s: {what}\nalertmanager log:\n{am.log_text()}")
        time.sleep(0.05)


@pytest.mark.parametrize(
    "credentials",
    [{"bearer_token": TOKEN}, {"basic": (USER, PASSWORD)}],
    ids=["bearer", "basic"],
)
def test_an_alertmanager_alert_opens_the_incident_rule_until_it_resolves(
    keyturn: Keyturn,
    start_alertmanager: Callable[..., lab.Alertmanager],
    credentials: dict[str, Any],
) -> None:
    before = keyturn.explain()
    assert (before["outcome"], before["rule"]) == ("require_approval", "db-admin-two-reviews")
    am = start_alertmanager(keyturn.webhook_url, **credentials)
    am.post_alert(LABELS, {"summary": "Primary database db-1 is not answering"})

    [firing] = poll(lambda: keyturn.alerts(target="db-1"), "db-1 alerting", am)
    assert (firing["source"], firing["name"], firing["status"]) == (
        "alertmanager",
        "PostgresPrimaryDown",
        "firing",
    )
    assert (firing["severity"], firing["targets"], firing["ends_at"]) == (
        "critical",
        ["db-1"],
        None,
    )
    assert firing["summary"] == "Primary database db-1 is not answering"
    during = keyturn.explain()
    assert (during["outcome"], during["rule"]) == ("auto_approve", "oncall-incident")
    assert during["facts"]["requester"]["on_call"] is True
    assert during["facts"]["target"]["alerting"] is True
    trace = {step["rule"]: step["matched"] for step in during["trace"]}
    assert trace["oncall-incident"] is True
    assert keyturn.explain("dave")["rule"] == "db-admin-two-reviews"  # alerting, not on call

    am.resolve_alert(LABELS, annotations={"summary": "Primary database db-1 is not answering"})
    poll(lambda: not keyturn.alerts(target="db-1"), "db-1 no longer alerting", am)
    [resolved] = keyturn.alerts(target="db-1", all=True)
    assert (resolved["fingerprint"], resolved["status"]) == (firing["fingerprint"], "resolved")
    assert resolved["ends_at"] is not None
    after = keyturn.explain()
    assert (after["outcome"], after["rule"]) == ("require_approval", "db-admin-two-reviews")
    assert after["facts"]["target"]["alerting"] is False
    assert keyturn.metric(
        "keyturn_alerts_received_total", source="alertmanager", status="resolved"
    ) == pytest.approx(1)


def test_alertmanager_with_a_wrong_token_is_refused_and_nothing_is_stored(
    keyturn: Keyturn, start_alertmanager: Callable[..., lab.Alertmanager]
) -> None:
    refused = "keyturn_alert_webhooks_refused_total"
    before = keyturn.metric(refused, reason="unauthenticated")
    am = start_alertmanager(keyturn.webhook_url, bearer_token="not-the-configured-token")
    am.post_alert(LABELS)
    poll(
        lambda: keyturn.metric(refused, reason="unauthenticated") > before,
        "the refusal counted",
        am,
    )
    assert keyturn.alerts(all=True) == []
    assert keyturn.metric("keyturn_alerts_received_total", source="alertmanager") == 0
    assert keyturn.explain()["facts"]["target"]["alerting"] is False


def test_crafted_labels_through_alertmanager_are_stored_but_map_to_no_target(
    keyturn: Keyturn, start_alertmanager: Callable[..., lab.Alertmanager]
) -> None:
    am = start_alertmanager(keyturn.webhook_url, bearer_token=TOKEN)
    am.post_alert({"alertname": "Crafted", "instance": "db-1|.*", "target": ".*"})
    [crafted] = poll(keyturn.alerts, "the crafted alert stored", am)
    assert (crafted["name"], crafted["targets"]) == ("Crafted", [])
    assert keyturn.alerts(target="db-1") == []
    assert keyturn.explain()["rule"] == "db-admin-two-reviews"
