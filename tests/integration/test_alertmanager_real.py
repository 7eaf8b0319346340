"""Real Prometheus Alertmanager (``keyturn.lab.Alertmanager``) → a loopback webhook receiver.

Proves that what Alertmanager 0.25 really sends -- its ``Authorization`` header from
``http_config`` and its version 4 payload, firing and then resolved -- passes
:func:`check_webhook_auth`, parses with :func:`parse_alertmanager` and maps to the configured
target with :class:`AlertTargets`; and that crafted labels sent through it map to nothing.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from keyturn.config import AlertMappingConfig, AlertsConfig, BasicAuthConfig, TargetConfig
from keyturn.domain.alerts import (
    AlertState,
    AlertTargets,
    check_webhook_auth,
    is_firing,
    parse_alertmanager,
)
from keyturn.domain.errors import Unauthenticated
from keyturn.lab import Alertmanager

pytestmark = pytest.mark.integration

TOKEN = "lab-bearer-5c1e0a"
USER, PASSWORD = "alertmanager", "lab-basic-93be"
DEADLINE = 20.0  # seconds to wait for a notification
STARTS = datetime(2020, 1, 1, 2, 45, 3, tzinfo=UTC)  # in the past, so a fixed end resolves it
ENDS = STARTS + timedelta(minutes=27)
LABELS = {"alertname": "PostgresPrimaryDown", "instance": "db-1:5432", "severity": "critical"}
SUMMARY = "Primary database db-1 is not answering heartbeats"
CONFIG = AlertsConfig(
    bearer_token_sha256=hashlib.sha256(TOKEN.encode()).hexdigest(),
    basic=BasicAuthConfig(
        username=USER, password_sha256=hashlib.sha256(PASSWORD.encode()).hexdigest()
    ),
    mappings=(AlertMappingConfig(match={"instance": r"db-1(:\d+)?"}, targets=("db-1",)),),
)
TARGETS = AlertTargets(CONFIG, [TargetConfig(name="db-1"), TargetConfig(name="db-2")])


@dataclass(frozen=True)
class Delivery:
    """One POST the receiver got."""

    path: str
    authorization: str | None
    content_type: str | None
    body: bytes


class WebhookRecorder:
    """A loopback HTTP server that answers every POST with 200 and records it."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._changed = threading.Condition()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                delivery = Delivery(
                    path=self.path,
                    authorization=self.headers.get("Authorization"),
                    content_type=self.headers.get("Content-Type"),
                    body=self.rfile.read(length),
                )
                self.send_response(200)
                self.end_headers()
                with recorder._changed:
                    recorder.deliveries.append(delivery)
                    recorder._changed.notify_all()

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: deliveries are asserted on, not logged."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1/webhooks/alertmanager"

    def wait_for(self, wanted: Callable[[Delivery], bool], timeout: float = DEADLINE) -> Delivery:
        """The first delivery for which ``wanted`` is true, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((d for d in self.deliveries if wanted(d)), None)
                left = deadline - time.monotonic()
                if found is not None or left <= 0:
                    break
                self._changed.wait(left)
        if found is None:
            raise AssertionError(f"no matching webhook within {timeout}s: {self.deliveries}")
        return found

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def with_status(status: str) -> Callable[[Delivery], bool]:
    return lambda d: f'"status":"{status}"'.encode() in d.body


def only_alert(delivery: Delivery) -> AlertState:
    [alert] = parse_alertmanager(delivery.body, max_alerts=CONFIG.max_alerts)
    return alert


@pytest.fixture
def receiver() -> Iterator[WebhookRecorder]:
    recorder = WebhookRecorder()
    yield recorder
    recorder.close()


@pytest.fixture
def start_alertmanager(
    tmp_path: Path, receiver: WebhookRecorder
) -> Iterator[Callable[..., Alertmanager]]:
    started: list[Alertmanager] = []

    def start(
        bearer_token: str | None = None, basic: tuple[str, str] | None = None
    ) -> Alertmanager:
        server = Alertmanager(tmp_path / "alertmanager", receiver.url, bearer_token, basic)
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


@pytest.mark.parametrize(
    ("credentials", "header"),
    [
        ({"bearer_token": TOKEN}, f"Bearer {TOKEN}"),
        ({"basic": (USER, PASSWORD)}, "Basic YWxlcnRtYW5hZ2VyOmxhYi1iYXNpYy05M2Jl"),
    ],
    ids=["bearer", "basic"],
)
def test_firing_then_resolved_notifications_authenticate_parse_and_map_to_the_target(
    start_alertmanager: Callable[..., Alertmanager],
    receiver: WebhookRecorder,
    credentials: dict[str, object],
    header: str,
) -> None:
    alertmanager = start_alertmanager(**credentials)
    alertmanager.post_alert(LABELS, {"summary": SUMMARY}, starts_at=STARTS)

    fired = receiver.wait_for(with_status("firing"))
    assert fired.authorization == header
    check_webhook_auth(CONFIG, fired.authorization)
    assert fired.content_type == "application/json"
    firing = only_alert(fired)
    assert (firing.name, firing.severity, firing.status) == (
        "PostgresPrimaryDown",
        "critical",
        "firing",
    )
    assert (firing.starts_at, firing.ends_at, firing.summary) == (STARTS, None, SUMMARY)
    assert firing.labels == LABELS
    assert TARGETS.targets_of(firing.labels) == ("db-1",)
    assert is_firing(firing, STARTS + timedelta(days=1))

    alertmanager.resolve_alert(LABELS, annotations={"summary": SUMMARY}, starts_at=STARTS)
    resolved_delivery = receiver.wait_for(with_status("resolved"))
    check_webhook_auth(CONFIG, resolved_delivery.authorization)
    resolved = only_alert(resolved_delivery)
    assert (resolved.fingerprint, resolved.status) == (firing.fingerprint, "resolved")
    assert resolved.ends_at is not None
    assert not is_firing(resolved, resolved.ends_at + timedelta(seconds=1))
    assert TARGETS.targets_of(resolved.labels) == ("db-1",)


def test_an_explicit_end_in_the_past_resolves_with_exactly_that_end(
    start_alertmanager: Callable[..., Alertmanager], receiver: WebhookRecorder
) -> None:
    alertmanager = start_alertmanager(bearer_token=TOKEN)
    alertmanager.post_alert(LABELS, starts_at=STARTS)
    receiver.wait_for(with_status("firing"))
    alertmanager.resolve_alert(LABELS, starts_at=STARTS, ends_at=ENDS)
    resolved = only_alert(receiver.wait_for(with_status("resolved")))
    assert (resolved.starts_at, resolved.ends_at) == (STARTS, ENDS)
    assert not is_firing(resolved, ENDS)
    assert is_firing(resolved, ENDS - timedelta(seconds=1)) is False  # status says resolved


def test_alertmanager_without_credentials_is_refused_by_the_webhook_check(
    start_alertmanager: Callable[..., Alertmanager], receiver: WebhookRecorder
) -> None:
    start_alertmanager().post_alert(LABELS)
    delivery = receiver.wait_for(with_status("firing"))
    assert delivery.authorization is None
    with pytest.raises(Unauthenticated, match="credentials are missing"):
        check_webhook_auth(CONFIG, delivery.authorization)


def test_crafted_labels_sent_through_alertmanager_map_to_no_target(
    start_alertmanager: Callable[..., Alertmanager], receiver: WebhookRecorder
) -> None:
    crafted = {"alertname": "Crafted", "instance": "db-1|.*", "target": ".*"}
    start_alertmanager(bearer_token=TOKEN).post_alert(crafted)
    alert = only_alert(receiver.wait_for(with_status("firing")))
    assert alert.labels == crafted
    assert TARGETS.targets_of(alert.labels) == ()


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1:9000/hook",
        "https://example.org/hook",
        "http://127.0.0.1@example.org/hook",
        "http://127.0.0.1.example.org/hook",
        "file:///etc/passwd",
    ],
)
def test_lab_alertmanager_sends_only_to_loopback(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        Alertmanager(tmp_path, url, bearer_token=TOKEN)


def test_lab_alertmanager_takes_one_kind_of_credentials(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        Alertmanager(tmp_path, "http://127.0.0.1:9/hook", TOKEN, (USER, PASSWORD))
