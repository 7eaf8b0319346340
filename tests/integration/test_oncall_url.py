"""iCalendar sources over real HTTP (a loopback server): success, errors, limits, recovery."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from keyturn.adapters.oncall_sources import OnCallSourceError, read_source
from keyturn.config import KeyturnConfig, ScheduleConfig, TargetConfig, parse_config
from keyturn.lab import free_port
from keyturn.service.oncall import OnCallSchedules
from keyturn.testing import FakeClock

pytestmark = pytest.mark.integration

EXAMPLE_ICS = (
    Path(__file__).resolve().parents[2] / "examples" / "oncall" / "database.ics"
).read_bytes()
TIMEOUT = timedelta(seconds=0.5)
MAX_BYTES = 64 * 1024


@dataclass
class Behaviour:
    """What the server answers on ``/feed.ics``; changed by tests while it runs."""

    status: int = 200
    body: bytes = EXAMPLE_ICS
    content_length: bool = True
    delay: float = 0.0
    trickle: float = 0.0  # seconds between single bytes
    release: threading.Event = field(default_factory=threading.Event)
    paths: list[str] = field(default_factory=list)


class Handler(BaseHTTPRequestHandler):
    """Serves the Behaviour of its server; ``/to-*`` paths redirect."""

    server: CalendarServer

    def do_GET(self) -> None:
        behaviour = self.server.behaviour
        behaviour.paths.append(self.path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if self.path.startswith("/to-"):
                self._redirect(self.path.removeprefix("/to-"))
                return
            if behaviour.delay:
                behaviour.release.wait(behaviour.delay)
            self.send_response(behaviour.status if self.path.startswith("/feed.ics") else 404)
            self.send_header("Content-Type", "text/calendar; charset=utf-8")
            if behaviour.content_length:
                self.send_header("Content-Length", str(len(behaviour.body)))
            self.end_headers()
            self._write(behaviour)

    def _redirect(self, where: str) -> None:
        location = {"ftp": "ftp://127.0.0.1/feed.ics", "feed": "/feed.ics"}[where]
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _write(self, behaviour: Behaviour) -> None:
        if not behaviour.trickle:
            self.wfile.write(behaviour.body)
            return
        for byte in behaviour.body:
            if behaviour.release.wait(behaviour.trickle):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests assert on behaviour, not on access logs."""


class CalendarServer(ThreadingHTTPServer):
    """A loopback HTTP server with a mutable Behaviour."""

    daemon_threads = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.behaviour = Behaviour()
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
def server() -> Iterator[CalendarServer]:
    """The server, running in a thread on a free port."""
    httpd = CalendarServer(free_port())
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.behaviour.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def fetch(url: str, *, max_bytes: int = MAX_BYTES) -> bytes:
    """read_source with the test timeout."""
    return read_source(url, resolve=Path, timeout=TIMEOUT, max_bytes=max_bytes)


def config_for(url: str) -> KeyturnConfig:
    """Users alice and bob; one URL schedule covering the target db-1; timeout 0.5 s."""
    data = {
        "version": 1,
        "users": [
            {"id": "alice", "name": "Alice Martin", "email": "alice@example.com"},
            {"id": "bob", "name": "Bob Okafor", "email": "bob@example.com"},
        ],
        "targets": [{"name": "db-1"}],
        "oncall": {
            "refresh": "PT5M",
            "keep_last_good": "PT1H",
            "timeout": "PT0.5S",
            "schedules": [{"name": "database", "ical": url, "targets": {"names": ["db-1"]}}],
        },
    }
    return parse_config(data).config


def schedules_for(config: KeyturnConfig, clock: FakeClock) -> OnCallSchedules:
    """OnCallSchedules reading through read_source, as the composition root wires it."""

    def read(schedule: ScheduleConfig) -> bytes:
        assert schedule.ical is not None
        oncall = config.oncall
        return read_source(
            schedule.ical, resolve=Path, timeout=oncall.timeout, max_bytes=oncall.max_bytes
        )

    return OnCallSchedules(config, read, clock)


def db1(config: KeyturnConfig) -> TargetConfig:
    """The target db-1."""
    found = config.target("db-1")
    assert found is not None
    return found


def test_a_calendar_url_is_read_and_puts_alice_on_call(server: CalendarServer) -> None:
    """The PagerDuty-style export over HTTP: alice is on call for db-1, bob is not."""
    config = config_for(f"{server.url}/feed.ics?token=s3cret")
    schedules = schedules_for(config, FakeClock(datetime(2026, 11, 21, 16, tzinfo=UTC)))
    schedules.refresh()
    assert schedules.on_call("alice", db1(config)) == ("database",)
    assert schedules.on_call("bob", db1(config)) == ()
    assert schedules.status()["database"]["state"] == "ok"
    assert server.behaviour.paths == ["/feed.ics?token=s3cret"]


def test_an_http_error_names_the_status_but_never_the_query_string(server: CalendarServer) -> None:
    """404 → "<scheme://host:port/path>: HTTP 404"; the token in the query stays out."""
    with pytest.raises(OnCallSourceError) as caught:
        fetch(f"{server.url}/missing.ics?token=s3cret")
    assert caught.value.message == f"{server.url}: HTTP 404"  # no path: feeds hide secrets there
    server.behaviour.status = 500
    with pytest.raises(OnCallSourceError, match=r"HTTP 500$"):
        fetch(f"{server.url}/feed.ics")


@pytest.mark.parametrize("content_length", [True, False], ids=["declared", "streamed"])
def test_a_response_over_max_bytes_is_refused(server: CalendarServer, content_length: bool) -> None:
    """Refused from Content-Length, or after max_bytes + 1 bytes when the length is unknown."""
    server.behaviour.body = EXAMPLE_ICS + b" " * 4096
    server.behaviour.content_length = content_length
    with pytest.raises(OnCallSourceError, match=r"over max_bytes \(2048 bytes\)"):
        fetch(f"{server.url}/feed.ics", max_bytes=2048)
    server.behaviour.body = EXAMPLE_ICS
    assert fetch(f"{server.url}/feed.ics", max_bytes=2048) == EXAMPLE_ICS


def test_a_slow_server_times_out(server: CalendarServer) -> None:
    """No answer within the timeout: a timeout error, promptly."""
    server.behaviour.delay = 5.0
    began = time.monotonic()
    with pytest.raises(OnCallSourceError, match=r"timed out after 0\.5 s"):
        fetch(f"{server.url}/feed.ics")
    assert time.monotonic() - began < 2.0


def test_a_trickling_server_is_cut_off_at_the_overall_timeout(server: CalendarServer) -> None:
    """A byte every 0.1 s never trips the per-read timeout, but the download as a whole is
    bounded by the timeout too."""
    server.behaviour.trickle = 0.1
    began = time.monotonic()
    with pytest.raises(OnCallSourceError, match=r"timed out \(the download took too long\)"):
        fetch(f"{server.url}/feed.ics")
    assert time.monotonic() - began < 2.0


def test_redirects_are_followed_within_http_but_not_to_other_schemes(
    server: CalendarServer,
) -> None:
    """A redirect to /feed.ics is followed; one to ftp:// is refused."""
    assert fetch(f"{server.url}/to-feed") == EXAMPLE_ICS
    with pytest.raises(OnCallSourceError, match="redirect to a 'ftp' URL refused"):
        fetch(f"{server.url}/to-ftp")


def test_a_refused_connection_is_a_network_error() -> None:
    """Nothing listens: a one-line error naming the kind of failure."""
    url = f"http://127.0.0.1:{free_port()}/feed.ics"
    with pytest.raises(OnCallSourceError, match=r"cannot fetch \(ConnectError\)"):
        fetch(url)


def test_an_outage_goes_stale_then_failed_and_recovers(server: CalendarServer) -> None:
    """ok → (server errors) stale, alice still on call → (past keep_last_good) failed, nobody
    on call → (server back) ok."""
    config = config_for(f"{server.url}/feed.ics")
    clock = FakeClock(datetime(2026, 11, 21, 16, tzinfo=UTC))
    schedules = schedules_for(config, clock)
    schedules.refresh()
    assert schedules.status()["database"]["state"] == "ok"

    server.behaviour.status = 503
    clock.advance(timedelta(minutes=30))
    schedules.refresh()
    status = schedules.status()["database"]
    assert (status["state"], status["error"]) == ("stale", f"{server.url}: HTTP 503")
    assert schedules.on_call("alice", db1(config)) == ("database",)

    server.behaviour.delay = 5.0  # now also slow
    clock.advance(timedelta(minutes=31))
    schedules.refresh()
    assert schedules.status()["database"]["state"] == "failed"
    assert "timed out" in str(schedules.status()["database"]["error"])
    assert schedules.on_call("alice", db1(config)) == ()
    assert schedules.ready() is False

    server.behaviour.status, server.behaviour.delay = 200, 0.0
    schedules.refresh()
    assert schedules.status()["database"] == {
        "state": "ok",
        "last_success": "2026-11-21T17:01:00Z",
        "error": None,
        "warnings": [],
    }
    assert schedules.on_call("alice", db1(config)) == ("database",)
