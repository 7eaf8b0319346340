"""The incident features over HTTP: alert webhooks, alert facts in policy, explain, scheduled
requests, configuration reload, the always-on report, on-call readiness and metrics.

The app is the real one (SQLite store, SSH CA provider, the example's on-call calendar, in which
alice is on call for the ``database`` schedule every day), started from a configuration *file*
so that ``POST /v1/admin/reload`` has something to re-read. Webhook credentials are set here:
the example leaves the webhooks off.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from keyturn import bootstrap, lab
from keyturn.config import load_config
from keyturn.entrypoints.api.app import create_app
from keyturn.entrypoints.server import Server
from tests.conftest import TOKENS, example_data
from tests.e2e.conftest import Api, TestClient

HOOK_TOKEN = "hook-token-4b1d9e"
HOOK_USER, HOOK_PASSWORD = "alertmanager", "hook-basic-7c2e51"
BEARER = {"Authorization": f"Bearer {HOOK_TOKEN}"}
BASIC = {
    "Authorization": "Basic " + base64.b64encode(f"{HOOK_USER}:{HOOK_PASSWORD}".encode()).decode()
}
GENERIC = "/v1/webhooks/alerts"
ALERTMANAGER = "/v1/webhooks/alertmanager"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "alertmanager"


def sha256(text: str) -> str:
    """Hex SHA-256, as the configuration stores credentials."""
    return hashlib.sha256(text.encode()).hexdigest()


def incident_data(tmp_path: Path, **alerts: Any) -> dict[str, Any]:
    """The example configuration with both webhook credentials (``alerts`` overrides keys)."""
    data = example_data(tmp_path)
    data["alerts"]["bearer_token_sha256"] = sha256(HOOK_TOKEN)
    data["alerts"]["basic"] = {"username": HOOK_USER, "password_sha256": sha256(HOOK_PASSWORD)}
    data["alerts"].update(alerts)
    return data


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as ``tmp_path/keyturn.yaml``; returns the path."""
    path = tmp_path / "keyturn.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@contextmanager
def serving(tmp_path: Path, data: dict[str, Any]) -> Iterator[Api]:
    """The real app started from a file holding ``data``, behind a TestClient."""
    app = bootstrap.build(load_config(write_config(tmp_path, data)))
    try:
        with TestClient(create_app(app)) as client:
            yield Api(client, app)
    finally:
        app.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The incident configuration (webhooks on, bearer and basic) over a TestClient."""
    with serving(tmp_path, incident_data(tmp_path)) as client:
        yield client


def hook(
    api: Api, body: object, *, path: str = GENERIC, headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST a webhook body (an object is sent as JSON, bytes as they are); bearer by default."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **(BEARER if headers is None else headers)}
    response: httpx.Response = api.client.post(path, content=content, headers=sent)
    return response


def alert(instance: str = "db-1:9187", status: str = "firing", **extra: Any) -> dict[str, Any]:
    """One generic-webhook alert named PostgresPrimaryDown."""
    labels = {"instance": instance, **extra.pop("labels", {})}
    return {"name": "PostgresPrimaryDown", "status": status, "labels": labels, **extra}


def stored(api: Api, **params: Any) -> list[dict[str, Any]]:
    """``GET /v1/alerts`` as alice (``all=True`` includes resolved alerts)."""
    response = api.get("alice", "/v1/alerts", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The RFC 9457 body of a refusal with this status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def explain(api: Api, user: str, **body: Any) -> httpx.Response:
    """``POST /v1/policy/explain`` as ``user``: db-admin on db-1 for an hour unless overridden."""
    sent = {"role": "db-admin", "target": "db-1", "duration": "PT1H", **body}
    return api.post(user, "/v1/policy/explain", json=sent)


def metric(api: Api, name: str, **labels: str) -> float:
    """One sample of ``/metrics`` (0 when the labelled series does not exist yet)."""
    text = api.client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# --- webhook authentication -------------------------------------------------------------------


@pytest.mark.parametrize("path", [GENERIC, ALERTMANAGER])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-the-hook-token"},
        {"Authorization": "Basic " + base64.b64encode(b"alertmanager:wrong").decode()},
        {"Authorization": "Token " + HOOK_TOKEN},
    ],
    ids=["none", "wrong-token", "wrong-password", "other-scheme"],
)
def test_webhook_without_valid_credentials_is_401_with_a_challenge_and_stores_nothing(
    api: Api, path: str, headers: dict[str, str]
) -> None:
    before = metric(api, "keyturn_alert_webhooks_refused_total", reason="unauthenticated")
    response = hook(api, {"alerts": [alert()]}, path=path, headers=headers)
    body = problem(response, 401)
    assert "Bearer" in response.headers["WWW-Authenticate"]
    assert "Basic" in response.headers["WWW-Authenticate"]
    assert HOOK_TOKEN not in response.text
    assert body["schemes"] == ["Bearer", "Basic"]
    assert stored(api, all=True) == []
    after = metric(api, "keyturn_alert_webhooks_refused_total", reason="unauthenticated")
    assert after == before + 1


def test_webhook_checks_credentials_before_it_looks_at_the_body(api: Api) -> None:
    """A wrong token with a malformed body is 401 (not 400): the body is never read."""
    response = hook(api, b"{not json", headers={"Authorization": "Bearer wrong"})
    problem(response, 401)
    assert metric(api, "keyturn_alert_webhooks_refused_total", reason="invalid") == 0


def test_basic_auth_is_accepted_by_both_webhooks(api: Api) -> None:
    payload = json.loads((FIXTURES / "alertmanager-webhook-v4.json").read_bytes())
    assert hook(api, payload, path=ALERTMANAGER, headers=BASIC).status_code == 200
    assert hook(api, {"alerts": [alert("db-2")]}, headers=BASIC).status_code == 200
    assert sorted(a["targets"][0] for a in stored(api)) == ["db-1", "db-2"]


def test_a_basic_only_configuration_challenges_with_basic(tmp_path: Path) -> None:
    """RFC 9110 §11.6.1: the challenge names the scheme the server accepts."""
    with serving(tmp_path, incident_data(tmp_path, bearer_token_sha256=None)) as api:
        response = hook(api, {"alerts": [alert()]}, headers={})
        problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
        assert "Bearer" not in response.headers["WWW-Authenticate"]
        assert hook(api, {"alerts": [alert()]}, headers=BEARER).status_code == 401
        assert hook(api, {"alerts": [alert()]}, headers=BASIC).status_code == 200


def test_webhooks_are_off_until_a_credential_is_configured(tmp_path: Path) -> None:
    """With the example's alerts section (no credential) every call is 401 and says why."""
    with serving(tmp_path, example_data(tmp_path)) as api:
        for path in (GENERIC, ALERTMANAGER):
            body = problem(hook(api, {"alerts": [alert()]}, path=path), 401)
            assert "alert webhooks are off" in body["detail"]
            assert "alerts.bearer_token_sha256" in body["detail"]
        assert stored(api, all=True) == []


# --- webhook bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        (GENERIC, b'{"alerts": [', "not valid JSON"),
        (ALERTMANAGER, b"\xff\xfe", "not UTF-8"),
        (ALERTMANAGER, None, "version '3' is not supported"),
        (GENERIC, {"alerts": [alert(), {"name": "X", "status": "firing", "lables": {}}]}, "lables"),
        (GENERIC, {"alerts": [alert(), alert()]}, "repeats"),
    ],
    ids=["truncated", "not-utf8", "version-3", "unknown-key", "duplicate"],
)
def test_malformed_webhook_bodies_are_400_and_nothing_is_stored(
    api: Api, path: str, body: object, says: str
) -> None:
    if body is None:  # the real v4 fixture, as an older Alertmanager would label it
        body = json.loads((FIXTURES / "alertmanager-webhook-v4.json").read_bytes()) | {
            "version": "3"
        }
    assert says in problem(hook(api, body, path=path), 400)["detail"]
    assert stored(api, all=True) == []
    assert metric(api, "keyturn_alert_webhooks_refused_total", reason="invalid") == 1


def test_ten_thousand_alerts_are_413_naming_the_limit_and_nothing_is_stored(api: Api) -> None:
    body = {"alerts": [{"name": f"A{i}", "status": "firing"} for i in range(10_000)]}
    problem_body = problem(hook(api, body), 413)
    assert "10000 alerts" in problem_body["detail"]
    assert "alerts.max_alerts" in problem_body["detail"]
    assert problem_body["limit"] == 1000
    assert stored(api, all=True) == []
    assert metric(api, "keyturn_alert_webhooks_refused_total", reason="too_large") == 1


def test_a_body_over_max_body_bytes_is_413_and_nothing_is_stored(tmp_path: Path) -> None:
    with serving(tmp_path, incident_data(tmp_path, max_body_bytes=2048)) as api:
        padding = "x" * 3000
        body = problem(hook(api, {"alerts": [alert(summary=padding)]}), 413)
        assert "2048" in body["detail"]
        assert body["limit"] == 2048
        assert stored(api, all=True) == []


def test_a_chunked_body_over_the_limit_is_cut_off_while_streaming(tmp_path: Path) -> None:
    """No Content-Length (chunked transfer): the size is counted as the bytes arrive."""
    app = bootstrap.build(load_config(write_config(tmp_path, incident_data(tmp_path))))
    port = lab.free_port()
    server = Server(app, "127.0.0.1", port, with_worker=False)
    server.start()
    try:
        chunk = b" " * 65536  # JSON whitespace: the body would be valid if it were short
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as http:
            response = http.post(
                GENERIC,
                content=iter([b'{"alerts": []}', *[chunk] * 17]),  # > 1 MiB, the default
                headers={**BEARER, "Content-Type": "application/json"},
            )
            assert "content-length" not in response.request.headers
            assert response.status_code == 413, response.text
            detail = response.json()["detail"]
            assert detail == f"the body is over the limit of {1024 * 1024} bytes"
            alerts = http.get(
                "/v1/alerts",
                params={"all": True},
                headers={"Authorization": f"Bearer {TOKENS['alice']}"},
            )
        assert alerts.json()["items"] == []
    finally:
        server.stop()
        app.close()


def test_a_crafted_alert_maps_to_no_target(api: Api) -> None:
    """Anchored matchers: ``db-1|.*`` is not ``db-1``; a target label ``*`` names no target."""
    crafted = alert("db-1|.*", labels={"target": "*"})
    response = hook(api, {"alerts": [crafted]})
    assert response.json() == {"alerts": 1, "firing": 1, "targets": []}
    [item] = stored(api)
    assert item["targets"] == []
    assert stored(api, target="db-1") == []
    facts = explain(api, "alice").json()["facts"]
    assert facts["target"]["alerting"] is False


def test_generic_alert_fires_then_resolves(api: Api) -> None:
    fired = hook(api, {"alerts": [alert(severity="critical", summary="primary down")]})
    assert fired.json() == {"alerts": 1, "firing": 1, "targets": ["db-1"]}
    [item] = stored(api)
    assert (item["name"], item["status"], item["severity"]) == (
        "PostgresPrimaryDown",
        "firing",
        "critical",
    )
    assert (item["source"], item["targets"], item["summary"]) == (
        "generic",
        ["db-1"],
        "primary down",
    )

    resolved = hook(api, {"alerts": [alert(severity="critical", status="resolved")]})
    assert resolved.json() == {"alerts": 1, "firing": 0, "targets": ["db-1"]}
    assert stored(api) == []
    [after] = stored(api, all=True)
    assert (after["fingerprint"], after["status"]) == (item["fingerprint"], "resolved")


def test_alertmanager_payload_is_stored_with_its_target(api: Api) -> None:
    payload = json.loads((FIXTURES / "alertmanager-webhook-v4.json").read_bytes())
    response = hook(api, payload, path=ALERTMANAGER)
    assert response.json() == {"alerts": 1, "firing": 1, "targets": ["db-1"]}
    [item] = stored(api, target="db-1")
    assert (item["fingerprint"], item["source"], item["starts_at"], item["ends_at"]) == (
        "3f1d6c0a9b2e4d17",
        "alertmanager",
        "2026-11-17T02:45:03Z",
        None,
    )


def test_alert_listing_filters_by_target_and_needs_a_user_token(api: Api) -> None:
    hook(api, {"alerts": [alert("db-1"), alert("db-2:9187", severity="warning")]})
    hook(api, {"alerts": [alert("db-1", status="resolved")]})
    assert [a["targets"] for a in stored(api)] == [["db-2"]]
    assert [a["severity"] for a in stored(api, target="db-2")] == ["warning"]
    assert stored(api, target="db-1") == []
    assert [a["status"] for a in stored(api, target="db-1", all=True)] == ["resolved"]
    problem(api.get(None, "/v1/alerts"), 401)
    problem(api.client.get("/v1/alerts", headers=BEARER), 401)  # the hook token is no user


# --- explain ----------------------------------------------------------------------------------


def test_explain_for_oneself_shows_the_facts_and_each_rule(api: Api) -> None:
    before = api.snapshot()
    data = explain(api, "alice", justification="checking").json()
    assert (data["outcome"], data["rule"], data["approvals"]) == (
        "require_approval",
        "db-admin-two-reviews",
        2,
    )
    facts = data["facts"]
    assert facts["requester"]["id"] == "alice"
    assert facts["requester"]["on_call"] is True
    assert facts["requester"]["on_call_schedules"] == ["database"]
    assert facts["target"]["alerting"] is False
    trace = {step["rule"]: step for step in data["trace"]}
    assert trace["oncall-incident"]["matched"] is False
    assert "target.alerting is false" in trace["oncall-incident"]["why"]
    assert api.snapshot() == before  # explaining creates nothing


def test_explain_for_someone_else_needs_admin(api: Api) -> None:
    assert "only admins" in problem(explain(api, "dave", requester="alice"), 403)["detail"]
    data = explain(api, "sam", requester="alice").json()
    assert data["facts"]["requester"]["id"] == "alice"
    assert data["facts"]["requester"]["on_call"] is True
    assert explain(api, "sam", requester="dave").json()["facts"]["requester"]["on_call"] is False
    problem(explain(api, "sam", requester="nobody"), 400)


def test_explain_after_a_firing_alert_matches_the_oncall_incident_rule(api: Api) -> None:
    hook(api, {"alerts": [alert(severity="critical")]})
    data = explain(api, "alice").json()
    assert (data["outcome"], data["rule"]) == ("auto_approve", "oncall-incident")
    assert data["facts"]["requester"]["on_call"] is True
    assert data["facts"]["target"]["alerting"] is True
    assert [a["name"] for a in data["facts"]["target"]["alerts"]] == ["PostgresPrimaryDown"]
    trace = {step["rule"]: step for step in data["trace"]}
    assert trace["oncall-incident"]["matched"] is True
    assert {c["expr"]: c["value"] for c in trace["oncall-incident"]["clauses"]} == {
        'role.tier == "high"': "true",
        "requester.on_call": "true",
        "target.alerting": "true",
    }
    # the alert is on db-1 only: db-2 still needs reviews
    assert explain(api, "alice", target="db-2").json()["rule"] == "db-admin-two-reviews"


# --- the 02:45 scene ---------------------------------------------------------------------------


def test_the_0245_scene_alice_gets_in_at_once_while_db1_is_alerting(api: Api, pubkey: str) -> None:
    def ask(user: str) -> dict[str, Any]:
        body = {
            "role": "db-admin",
            "target": "db-1",
            "duration": "PT1H",
            "justification": "PostgresPrimaryDown on db-1",
            "ssh_public_key": pubkey,
        }
        response = api.post(user, "/v1/requests", json=body)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    hook(api, {"alerts": [alert(severity="critical")]})

    alice = ask("alice")
    assert (alice["status"], alice["decision"]["rule"]) == ("approved", "oncall-incident")
    assert alice["grant"]["status"] == "active"
    assert alice["grant"]["credentials"]["ssh_certificate"].startswith("ssh-ed25519-cert-v01@")

    dave = ask("dave")  # a lead, alerting target, but not on call
    assert (dave["status"], dave["decision"]["rule"]) == ("pending", "db-admin-two-reviews")
    assert dave["decision"]["approvals"] == 2

    hook(api, {"alerts": [alert(severity="critical", status="resolved")]})
    again = ask("alice")
    assert (again["status"], again["decision"]["rule"]) == ("pending", "db-admin-two-reviews")
    assert again["decision"]["facts"]["target"]["alerting"] is False
    assert again["grant"] is None


# --- scheduled requests -----------------------------------------------------------------------


def _request_at(api: Api, pubkey: str, start: datetime) -> httpx.Response:
    body = {
        "role": "server-admin",
        "target": "db-1",
        "duration": "PT30M",
        "justification": "maintenance window",
        "ssh_public_key": pubkey,
        "start": start.isoformat().replace("+00:00", "Z"),
    }
    return api.post("alice", "/v1/requests", json=body)


def test_a_start_in_the_past_is_400(api: Api, pubkey: str) -> None:
    before = api.snapshot()
    start = datetime.now(UTC) - timedelta(minutes=5)
    body = problem(_request_at(api, pubkey, start), 400)
    assert body["field"] == "start"
    assert "not in the future" in body["detail"]
    assert api.snapshot() == before


def test_a_start_in_the_future_schedules_the_request(api: Api, pubkey: str) -> None:
    start = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    response = _request_at(api, pubkey, start)
    assert response.status_code == 201, response.text
    data = response.json()
    assert data["status"] == "scheduled"
    assert datetime.fromisoformat(data["start_at"]) == start  # RFC 3339, microseconds shown
    assert data["grant"] is None
    assert data["decision"]["facts"]["request"]["scheduled"] is True
    assert api.get("alice", f"/v1/requests/{data['id']}").json()["start_at"] == data["start_at"]


# --- reload -----------------------------------------------------------------------------------


def _with_db3(tmp_path: Path) -> dict[str, Any]:
    data = incident_data(tmp_path)
    data["targets"].append({"name": "db-3", "labels": {"env": "prod", "service": "postgres"}})
    return data


def test_reload_needs_admin(api: Api) -> None:
    assert "only admins" in problem(api.post("alice", "/v1/admin/reload"), 403)["detail"]
    problem(api.post(None, "/v1/admin/reload"), 401)


def test_admin_reload_applies_a_changed_file(api: Api, tmp_path: Path) -> None:
    problem(explain(api, "alice", target="db-3"), 400)
    write_config(tmp_path, _with_db3(tmp_path))
    result = api.post("sam", "/v1/admin/reload").json()
    assert result["applied"] is True
    assert result["old_sha256"] != result["new_sha256"]
    assert explain(api, "alice", target="db-3").json()["facts"]["target"]["name"] == "db-3"
    events = api.get("sam", "/v1/audit", params={"limit": 1000}).json()["items"]
    assert [e["action"] for e in events][-1] == "config.reloaded"
    assert metric(api, "keyturn_config_reloads_total", result="applied") == 1


def _break_yaml(tmp_path: Path) -> None:
    (tmp_path / "keyturn.yaml").write_text("users: [unclosed\n")


def _break_policy_tests(tmp_path: Path) -> None:
    """A valid file that adds db-3 but drops the rule its embedded policy tests rely on."""
    data = _with_db3(tmp_path)
    data["policy"]["rules"] = [r for r in data["policy"]["rules"] if r["name"] != "oncall-incident"]
    write_config(tmp_path, data)


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [(_break_yaml, "not valid YAML"), (_break_policy_tests, "embedded policy test")],
    ids=["yaml-syntax", "policy-test-fails"],
)
def test_a_broken_file_is_refused_and_the_old_configuration_keeps_serving(
    api: Api, tmp_path: Path, breakage: Callable[[Path], None], reason: str
) -> None:
    hook(api, {"alerts": [alert()]})
    breakage(tmp_path)
    result = api.post("sam", "/v1/admin/reload").json()
    assert result["applied"] is False
    assert reason in result["reason"]
    assert result["old_sha256"] == api.app.loaded.sha256
    # the old rules still decide, and the old target list still holds
    assert explain(api, "alice").json()["rule"] == "oncall-incident"
    problem(explain(api, "alice", target="db-3"), 400)
    events = api.get("sam", "/v1/audit", params={"limit": 1000}).json()["items"]
    assert events[-1]["action"] == "config.reload_refused"
    assert metric(api, "keyturn_config_reloads_total", result="refused") == 1


# --- reports, readiness, metrics --------------------------------------------------------------


def test_always_on_report_is_admin_only_and_states_its_definition(api: Api) -> None:
    problem(api.get("alice", "/v1/reports/always-on"), 403)
    data = api.get("sam", "/v1/reports/always-on").json()
    assert set(data["definition"]) == {
        "timezone",
        "workdays",
        "start",
        "end",
        "window",
        "threshold",
    }
    assert data["definition"]["window"] == "P14D"
    assert data["items"] == []


def test_readiness_details_show_the_oncall_source(api: Api) -> None:
    response = api.client.get("/readyz")
    assert response.status_code == 200
    database = response.json()["details"]["oncall"]["database"]
    assert database["state"] == "ok"
    assert set(database) == {"state", "last_success"}  # errors may name a feed's secret path


def test_metrics_expose_the_incident_families(api: Api, pubkey: str) -> None:
    hook(api, {"alerts": [alert()]})
    hook(api, {"alerts": [alert()]}, headers={})
    created = api.post(
        "alice",
        "/v1/requests",
        json={
            "role": "db-admin",
            "target": "db-1",
            "duration": "PT1H",
            "justification": "incident",
            "ssh_public_key": pubkey,
        },
    )
    assert created.status_code == 201, created.text
    api.post("sam", "/v1/admin/reload")
    assert metric(api, "keyturn_alerts_received_total", source="generic", status="firing") == 1
    assert metric(api, "keyturn_alert_webhooks_refused_total", reason="unauthenticated") == 1
    assert (
        metric(
            api, "keyturn_policy_decisions_total", outcome="auto_approve", rule="oncall-incident"
        )
        == 1
    )
    assert metric(api, "keyturn_config_reloads_total", result="applied") == 1
    assert metric(api, "keyturn_oncall_source_up", schedule="database") == 1
    assert metric(api, "keyturn_oncall_source_usable", schedule="database") == 1
    last = metric(api, "keyturn_oncall_source_last_success_timestamp_seconds", schedule="database")
    assert abs(last - datetime.now(UTC).timestamp()) < 600
    families = {f.name for f in text_string_to_metric_families(api.client.get("/metrics").text)}
    assert "keyturn_policy_rule_errors" in families
