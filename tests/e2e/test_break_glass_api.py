"""Online break-glass end to end: the real app (SQLite store, SSH CA) over HTTP and the CLI, a
real SMTP server (aiosmtpd) and a real webhook receiver on loopback, a real sshd, and an injected
:class:`~keyturn.testing.FakeClock` that drives the post-incident review's deadline.

The fake clock starts at the real time (so the certificates it dates are valid for a real sshd)
and only moves when a test advances it. Notifications leave from background threads; a test waits
for them with a bounded poll, and proves that nothing *else* was sent by waiting for a marker
message sent after them (both senders deliver in order).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from prometheus_client.parser import text_string_to_metric_families

from keyturn import bootstrap, lab
from keyturn.bootstrap import App
from keyturn.entrypoints import worker
from keyturn.ports import Notification, Recipient
from keyturn.testing import FakeClock
from tests import webhook_receiver
from tests.conftest import TOKENS, example_data, load
from tests.e2e.conftest import Api, cli, succeeded

KEYTURN = str(Path(sys.executable).parent / "keyturn")
SENDER = "keyturn@example.org"
WHY = "PostgresPrimaryDown on db-1: promoting the replica by hand"
TOLD = {
    "carol@example.com",  # the approvers of db-admin (group dba-leads) ...
    "dave@example.com",
    "erin@example.com",
    "sam@example.com",  # ... and the security contacts: a user and a bare address
    "security-oncall@example.com",
}
REVIEWERS = ["carol", "dave", "erin", "sam"]
DEADLINE = 10.0  # seconds to wait for a background delivery
BARRIER_EVENT = "test.barrier"


# --- a real SMTP server and a real webhook receiver -------------------------------------------


@dataclass(frozen=True)
class Mail:
    """One message as aiosmtpd received it."""

    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def to(self) -> str:
        [address] = self.rcpt_tos
        return address

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        return str(self.message.get_content()).replace("\r\n", "\n")


class Inbox:
    """aiosmtpd handler recording every message it accepts."""

    def __init__(self) -> None:
        self._messages: list[Mail] = []
        self._lock = threading.Lock()

    async def handle_DATA(  # noqa: N802 - the hook name aiosmtpd calls
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        parsed = BytesParser(policy=default_policy).parsebytes(envelope.original_content or b"")
        assert isinstance(parsed, EmailMessage)
        with self._lock:
            self._messages.append(Mail(list(envelope.rcpt_tos), parsed))
        return "250 Message accepted"

    def all(self) -> list[Mail]:
        """Every message but the test's barrier markers."""
        with self._lock:
            return [m for m in self._messages if BARRIER_EVENT not in m.body]

    def subjects(self, prefix: str) -> list[Mail]:
        """The messages whose subject starts with ``prefix``."""
        return [m for m in self.all() if m.subject.startswith(prefix)]

    def has_marker(self, marker: str) -> bool:
        with self._lock:
            return any(m.subject == marker for m in self._messages)


class Receiver(webhook_receiver.Receiver):
    """The webhook endpoint, read by kind and event, with the test's barrier markers."""

    def all(self) -> list[dict[str, Any]]:
        """Every payload but the test's barrier markers."""
        return [p for p in self.payloads() if p.get("event") != BARRIER_EVENT]

    def events(self, kind: str, event: str) -> list[dict[str, Any]]:
        """The payloads of this kind (``notification`` or ``alert``) and event."""
        return [p for p in self.all() if (p.get("kind"), p.get("event")) == (kind, event)]

    def has_marker(self, marker: str) -> bool:
        return any(p.get("summary") == marker for p in self.payloads())


def wait_until(condition: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``condition`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


_markers = itertools.count(1)


@dataclass
class World:
    """Keyturn behind a TestClient, its fake clock, and what its notifier sent."""

    api: Api
    clock: FakeClock
    inbox: Inbox
    receiver: Receiver
    tmp: Path

    @property
    def app(self) -> App:
        return self.api.app

    def settle(self) -> None:
        """Wait until everything notified so far has been delivered: a marker sent now through
        the same notifier arrives after it (each sender is one thread draining a FIFO queue)."""
        marker = f"barrier-{next(_markers)}"
        note = Notification(
            BARRIER_EVENT,
            (Recipient("barrier", "Barrier", "barrier@example.com"),),
            marker,
            BARRIER_EVENT,
            {},
        )
        self.app.deps.notifier.notify(note)
        wait_until(
            lambda: self.inbox.has_marker(marker) and self.receiver.has_marker(marker),
            f"the marker {marker} by e-mail and webhook",
        )


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def smtp_port(inbox: Inbox) -> Iterator[int]:
    """aiosmtpd on a free loopback port; yields the port."""
    port = lab.free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield port
    controller.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver.serving(Receiver()) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at the real time (whole seconds): certificates are valid for a real sshd,
    and the review deadline only passes when a test says so."""
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def wired(tmp_path: Path, clock: FakeClock, smtp_port: int, receiver: Receiver) -> Iterator[App]:
    """The real Keyturn with e-mail (aiosmtpd) and webhook notifications and the fake clock.

    Overrides ``tests/e2e/conftest.py``'s ``wired``, so its ``api`` and ``live_server`` use it.
    """
    data = example_data(tmp_path)
    data["notifier"] = {
        "webhook_url": receiver.url,
        "timeout": "PT5S",
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "from_address": SENDER},
    }
    app = bootstrap.build(load(data), clock=clock)
    yield app
    app.close()


@pytest.fixture
def world(api: Api, clock: FakeClock, inbox: Inbox, receiver: Receiver, tmp_path: Path) -> World:
    return World(api, clock, inbox, receiver, tmp_path)


@pytest.fixture(autouse=True)
def wide_tables(isolated_settings: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ambient CLI settings, and tables unfolded so ids can be matched."""
    monkeypatch.setenv("COLUMNS", "250")


# --- helpers ----------------------------------------------------------------------------------


def body(pubkey: str, **changes: Any) -> dict[str, Any]:
    """A valid break-glass body (db-admin on db-1, the cap); ``changes`` override or, with the
    value ``...``, drop a field."""
    sent: dict[str, Any] = {
        "role": "db-admin",
        "target": "db-1",
        "justification": WHY,
        "ssh_public_key": pubkey,
    }
    sent.update(changes)
    return {k: v for k, v in sent.items() if v is not ...}


def break_glass(
    world: World, pubkey: str, user: str | None = "alice", **changes: Any
) -> httpx.Response:
    """``POST /v1/break-glass`` as ``user``."""
    return world.api.post(user, "/v1/break-glass", json=body(pubkey, **changes))


def used(world: World, pubkey: str, **changes: Any) -> dict[str, Any]:
    """Alice breaks glass successfully; returns ``{request, review}``."""
    response = break_glass(world, pubkey, **changes)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The RFC 9457 body of a refusal with this status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    data: dict[str, Any] = response.json()
    assert data["status"] == status
    return data


def reviews(world: World, user: str = "sam", *, all: bool = True) -> list[dict[str, Any]]:
    """``GET /v1/break-glass/reviews`` as ``user`` (closed ones too unless ``all`` is False)."""
    response = world.api.get(user, "/v1/break-glass/reviews", params={"all": all})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def close(world: World, user: str, review_id: str, **sent: Any) -> httpx.Response:
    """``POST /v1/break-glass/reviews/{id}/close`` as ``user``."""
    payload = {"verdict": "justified", "comment": "primary was down; the use was needed"} | sent
    payload = {k: v for k, v in payload.items() if v is not ...}
    return world.api.post(user, f"/v1/break-glass/reviews/{review_id}/close", json=payload)


def audit(world: World, action: str) -> list[dict[str, Any]]:
    """The audit events of one action (read as the admin)."""
    response = world.api.get("sam", "/v1/audit", params={"limit": 10_000})
    assert response.status_code == 200, response.text
    return [e for e in response.json()["items"] if e["action"] == action]


def metric(world: World, name: str, **labels: str) -> float:
    """One sample of ``/metrics`` (0 when the labelled series does not exist yet)."""
    text = world.api.client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def uses(world: World) -> float:
    return metric(world, "keyturn_break_glass_uses_total", mode="online", role="db-admin")


def state(world: World) -> tuple[tuple[int, int, int], int, float]:
    """(requests, grants, audit events), reviews, break-glass uses: compared around a refusal."""
    return world.api.snapshot(), len(reviews(world)), uses(world)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def run(*args: str, url: str, user: str) -> subprocess.CompletedProcess[str]:
    """The installed ``keyturn`` console script (it maps errors to exit codes)."""
    env = dict(os.environ, COLUMNS="250", KEYTURN_URL=url, KEYTURN_TOKEN=TOKENS[user])
    return subprocess.run(
        [KEYTURN, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


# --- who may break glass ----------------------------------------------------------------------


@pytest.mark.parametrize("user", ["mallory", "bob"])
def test_a_non_member_is_refused_and_nothing_is_written_or_sent(
    world: World, pubkey: str, user: str
) -> None:
    """bob (a dba, eligible for db-admin the usual way) and mallory are not in breakglass-db."""
    before = state(world)
    data = problem(break_glass(world, pubkey, user), 403)
    assert "breakglass-db" in data["detail"]
    assert state(world) == before
    assert reviews(world) == []
    assert audit(world, "break_glass.used") == []
    world.settle()
    assert world.inbox.all() == []
    assert world.receiver.all() == []


def test_no_token_is_401_and_nothing_is_written(world: World, pubkey: str) -> None:
    before = state(world)
    problem(break_glass(world, pubkey, user=None), 401)
    assert state(world) == before


def test_a_member_gets_access_at_once_flagged_and_audited(world: World, pubkey: str) -> None:
    now = world.clock.now()
    data = used(world, pubkey)
    request, review = data["request"], data["review"]
    assert (request["status"], request["break_glass"], request["requester"]) == (
        "approved",
        True,
        "alice",
    )
    assert request["decision"]["rule"] == "break-glass"
    assert request["duration"] == "PT1H"  # the role's break-glass cap, by default
    grant = request["grant"]
    assert (grant["status"], grant["break_glass"], grant["user"]) == ("active", True, "alice")
    assert grant["credentials"]["ssh_certificate"].startswith("ssh-ed25519-cert-v01@openssh.com ")
    assert at(grant["not_after"]) == now + timedelta(hours=1)

    assert (review["status"], review["mode"], review["user"]) == ("open", "online", "alice")
    assert (review["grant_id"], review["request_id"]) == (grant["id"], request["id"])
    assert at(review["used_at"]) == now
    assert at(review["due_at"]) == now + timedelta(hours=72)
    assert review["overdue"] is False
    assert sorted(review["reviewers"]) == REVIEWERS  # never alice herself

    shown = world.api.get("alice", f"/v1/requests/{request['id']}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["break_glass"] is True
    assert shown.json()["grant"]["break_glass"] is True
    listed = world.api.get("sam", "/v1/grants", params={"limit": 1000}).json()["items"]
    [row] = [g for g in listed if g["id"] == grant["id"]]
    assert (row["break_glass"], row["status"], row["credentials"]) == (True, "active", {})
    requests = world.api.get("sam", "/v1/requests", params={"limit": 1000}).json()["items"]
    assert [(r["id"], r["break_glass"]) for r in requests] == [(request["id"], True)]

    [event] = audit(world, "break_glass.used")
    assert event["actor"] == "alice"
    assert event["subject"] == {
        "request_id": request["id"],
        "grant_id": grant["id"],
        "user_id": "alice",
    }
    assert event["details"]["mode"] == "online"
    assert event["details"]["duration_s"] == 3600
    assert event["details"]["justification"] == WHY
    assert event["details"]["review_id"] == review["id"]
    for action in ("grant.provisioning", "grant.issued"):
        [flagged] = audit(world, action)
        assert flagged["subject"]["grant_id"] == grant["id"]
        assert flagged["details"]["break_glass"] is True


def test_a_shorter_window_than_the_cap_is_granted_as_asked(world: World, pubkey: str) -> None:
    data = used(world, pubkey, duration="PT20M")
    grant = data["request"]["grant"]
    assert data["request"]["duration"] == "PT20M"
    assert at(grant["not_after"]) == world.clock.now() + timedelta(minutes=20)


def test_a_justification_of_exactly_the_minimum_length_is_accepted(
    world: World, pubkey: str
) -> None:
    """The boundary of ``break_glass.justification_min_length`` (20): 20 is enough."""
    text = "db-1 is down, fix it"
    assert len(text) == 20
    assert used(world, pubkey, justification=text)["request"]["justification"] == text


@pytest.mark.integration
def test_the_certificate_is_accepted_by_a_real_sshd_that_trusts_the_served_ca_lines(
    world: World, pubkey_path: Path
) -> None:
    data = used(world, pubkey_path.read_text())
    cert = data["request"]["grant"]["credentials"]["ssh_certificate"]
    cert_path = pubkey_path.with_name("id_ed25519-cert.pub")
    cert_path.write_text(cert + "\n")
    shown = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(cert_path)], capture_output=True, text=True, check=True
    ).stdout
    assert "db-admin@db-1" in shown

    served = world.api.get("carol", "/v1/ssh/ca")
    assert served.status_code == 200, served.text
    lines = served.text.splitlines()
    assert lines == [world.app.ssh.ca_public_line]  # no offline kit: Keyturn's CA only
    ca_file = world.tmp / "trusted_user_ca_keys"
    ca_file.write_text(served.text)
    private_key = pubkey_path.with_suffix("")
    krl = world.app.ssh.krl_path
    db1 = lab.Sshd(world.tmp / "sshd-db-1", ca_file, krl, ["db-admin@db-1"]).start()
    db2 = lab.Sshd(world.tmp / "sshd-db-2", ca_file, krl, ["db-admin@db-2"]).start()
    try:
        login = lab.ssh_login(db1, private_key, cert_path)
        assert login.returncode == 0, login.stderr
        assert f"grant={data['request']['grant']['id']}" in db1.log_text()
        assert lab.ssh_login(db2, private_key, cert_path).returncode != 0  # db-1 only
    finally:
        db1.stop()
        db2.stop()


# --- never silent -----------------------------------------------------------------------------


def test_approvers_and_security_are_told_by_email_and_webhook_and_alice_is_not(
    world: World, pubkey: str
) -> None:
    data = used(world, pubkey)
    review_id, grant_id = data["review"]["id"], data["request"]["grant"]["id"]
    wait_until(
        lambda: {m.to for m in world.inbox.subjects("BREAK-GLASS")} >= TOLD,
        "the break-glass e-mails",
    )
    wait_until(
        lambda: world.receiver.events("notification", "break_glass.used"),
        "the break-glass webhook",
    )
    world.settle()  # anything else sent with them has arrived too

    mails = world.inbox.subjects("BREAK-GLASS")
    assert sorted(m.to for m in mails) == sorted(TOLD)  # each once; none to alice
    for mail in mails:
        assert mail.subject == "BREAK-GLASS: alice took db-admin on db-1"
        assert WHY in mail.body
        assert review_id in mail.body
        assert grant_id in mail.body
    to_alice = [m.subject for m in world.inbox.all() if m.to == "alice@example.com"]
    assert [s.split(":")[0] for s in to_alice] == ["Active"]  # her grant, not the alarm

    [hook] = world.receiver.events("notification", "break_glass.used")
    assert hook["source"] == "keyturn"
    assert hook["summary"] == "BREAK-GLASS: alice took db-admin on db-1"
    told = {r["email"] for r in hook["recipients"]}
    assert told == TOLD
    assert "alice" not in {r["user_id"] for r in hook["recipients"]}
    details = hook["details"]
    assert (details["review_id"], details["user_id"], details["mode"]) == (
        review_id,
        "alice",
        "online",
    )
    assert (details["role"], details["target"], details["justification"]) == (
        "db-admin",
        "db-1",
        WHY,
    )


def test_metrics_count_the_use_and_readiness_shows_no_kit(world: World, pubkey: str) -> None:
    ready = world.api.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["details"]["break_glass"]["state"] == "none"
    assert uses(world) == 0
    used(world, pubkey)
    assert uses(world) == 1
    assert metric(world, "keyturn_post_incident_reviews_open", overdue="false") == 1
    assert metric(world, "keyturn_post_incident_reviews_open", overdue="true") == 0
    assert metric(world, "keyturn_break_glass_kit_ready") == 0
    assert world.api.client.get("/readyz").json()["details"]["break_glass"]["state"] == "none"
    kit = world.api.get("alice", "/v1/break-glass/kit")
    assert (kit.status_code, kit.json()) == (200, {"state": "none"})


# --- the post-incident review -----------------------------------------------------------------


def test_the_review_is_closed_by_someone_else_never_by_the_user(world: World, pubkey: str) -> None:
    review = used(world, pubkey)["review"]
    rid = review["id"]
    assert [r["id"] for r in reviews(world, "carol", all=False)] == [rid]
    assert [r["id"] for r in reviews(world, "alice", all=False)] == [rid]  # she sees her own
    assert reviews(world, "mallory") == []

    refused = problem(close(world, "alice", rid), 403)
    assert "someone else" in refused["detail"]
    assert problem(close(world, "bob", rid), 404)["status"] == 404  # not his to see
    assert [r["status"] for r in reviews(world)] == ["open"]
    assert audit(world, "break_glass.review_closed") == []

    world.clock.advance(timedelta(hours=5))
    closed = close(world, "carol", rid, comment="primary was down; promotion was the fix")
    assert closed.status_code == 200, closed.text
    data = closed.json()
    assert (data["status"], data["verdict"], data["closed_by"]) == ("closed", "justified", "carol")
    assert data["comment"] == "primary was down; promotion was the fix"
    assert at(data["closed_at"]) == world.clock.now()
    assert reviews(world, "carol", all=False) == []
    assert [r["status"] for r in reviews(world, "carol")] == ["closed"]

    again = problem(close(world, "dave", rid, verdict="unjustified"), 409)
    assert again["status"] == 409
    [event] = audit(world, "break_glass.review_closed")
    assert (event["actor"], event["details"]["verdict"]) == ("carol", "justified")
    assert event["details"]["overdue"] is False
    report = world.api.get("sam", "/v1/reports/break-glass").json()
    assert report["totals"]["justified"] == 1
    assert report["totals"]["open"] == 0
    verified = world.api.get("sam", "/v1/audit/verify").json()
    assert verified["ok"] is True, verified


def test_an_overdue_review_alerts_once_and_shows_in_the_report(world: World, pubkey: str) -> None:
    first = used(world, pubkey)["review"]
    assert close(world, "carol", first["id"]).status_code == 200
    second = used(world, pubkey, justification="db-1 again: replication slot filled the disk")
    rid = second["review"]["id"]
    world.settle()

    world.clock.advance(timedelta(hours=72) - timedelta(minutes=1))
    worker.run_once(world.app)
    world.settle()
    assert world.receiver.events("alert", "break_glass_review_overdue") == []
    assert world.inbox.subjects("Overdue") == []
    assert world.api.get("sam", "/v1/reports/break-glass").json()["totals"]["overdue"] == 0

    world.clock.advance(timedelta(minutes=2))  # now past the 72 h deadline
    worker.run_once(world.app)
    wait_until(
        lambda: world.receiver.events("alert", "break_glass_review_overdue"), "the overdue alert"
    )
    wait_until(
        lambda: {m.to for m in world.inbox.subjects("Overdue")} >= TOLD, "the overdue e-mails"
    )
    world.settle()

    [alert] = world.receiver.events("alert", "break_glass_review_overdue")
    assert alert["details"]["review_id"] == rid
    assert rid in alert["summary"]
    [told] = world.receiver.events("notification", "break_glass.review_overdue")
    assert {r["email"] for r in told["recipients"]} == TOLD
    mails = world.inbox.subjects("Overdue")
    assert sorted(m.to for m in mails) == sorted(TOLD)
    assert all(
        m.subject == "Overdue: post-incident review of alice's break-glass use" for m in mails
    )
    assert all(rid in m.body for m in mails)
    [event] = audit(world, "break_glass.review_overdue")
    assert event["subject"]["review_id"] == rid

    report = world.api.get("sam", "/v1/reports/break-glass")
    assert report.status_code == 200, report.text
    totals = report.json()["totals"]
    assert (totals["uses"], totals["online"], totals["open"], totals["overdue"]) == (2, 2, 1, 1)
    assert totals["justified"] == 1
    flagged = {r["id"]: r["overdue"] for r in report.json()["reviews"]}
    assert flagged == {first["id"]: False, rid: True}
    assert [r["overdue"] for r in reviews(world, "carol", all=False)] == [True]
    assert metric(world, "keyturn_post_incident_reviews_open", overdue="true") == 1

    sent = (len(world.inbox.all()), len(world.receiver.all()))
    world.clock.advance(timedelta(hours=1))
    worker.run_once(world.app)  # once per review: nothing more
    world.settle()
    assert (len(world.inbox.all()), len(world.receiver.all())) == sent
    assert len(audit(world, "break_glass.review_overdue")) == 1

    problem(world.api.get("alice", "/v1/reports/break-glass"), 403)
    problem(world.api.get("carol", "/v1/reports/break-glass"), 403)

    closed = close(world, "sam", rid, verdict="unjustified", comment="no incident on record")
    assert closed.status_code == 200, closed.text
    [closing] = [
        e for e in audit(world, "break_glass.review_closed") if e["subject"]["review_id"] == rid
    ]
    assert closing["details"]["overdue"] is True


# --- hostile and bad input --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"duration": "PT2H"}, "duration", "above role db-admin's break-glass cap"),
        ({"duration": "PT1H1S"}, "duration", "cap"),
        ({"duration": "PT0S"}, "duration", "longer than zero"),
        ({"duration": "an hour"}, "duration", "not an ISO 8601 duration"),
        ({"duration": "-PT1H"}, "duration", "ISO 8601"),
        ({"justification": ""}, "justification", ""),
        ({"justification": "   \t  "}, "justification", ""),
        ({"justification": "db-1 down, fix it"}, "justification", "at least 20 characters"),
        ({"justification": "x" * 19}, "justification", "at least 20 characters"),
        ({"role": "server-admin"}, "role", "no break-glass configuration"),
        ({"role": "root-everywhere"}, "role", "unknown role"),
        ({"target": "db-9"}, "target", "unknown target"),
        ({"ssh_public_key": ...}, "ssh_public_key", "public key"),
        ({"ssh_public_key": "ssh-ed25519 not-a-key"}, "ssh_public_key", ""),
        ({"justification": ...}, None, "justification"),
        ({"role": ...}, None, "role"),
        ({"skip_review": True}, None, "skip_review"),
        ({"break_glass_group": "contractors"}, None, "break_glass_group"),
    ],
    ids=[
        "duration-above-cap",
        "duration-one-second-above-cap",
        "duration-zero",
        "duration-not-iso",
        "duration-negative",
        "justification-empty",
        "justification-blank",
        "justification-17-chars",
        "justification-19-chars",
        "role-without-break-glass",
        "role-unknown",
        "target-unknown",
        "ssh-key-missing",
        "ssh-key-garbage",
        "justification-missing",
        "role-missing",
        "extra-field",
        "extra-field-group",
    ],
)
def test_hostile_break_glass_input_is_400_and_nothing_is_written_or_sent(
    world: World, pubkey: str, changes: dict[str, Any], field: str | None, says: str
) -> None:
    before = state(world)
    data = problem(break_glass(world, pubkey, **changes), 400)
    if field is not None:
        assert data.get("field") == field, data
    assert says in data["detail"], data
    assert state(world) == before
    world.settle()
    assert world.inbox.all() == []
    assert world.receiver.all() == []


def test_control_characters_in_the_justification_are_escaped_everywhere_it_is_shown(
    world: World, pubkey: str
) -> None:
    """A terminal escape in the justification reaches no reader raw: API, audit, e-mail."""
    data = used(world, pubkey, justification=WHY + "\x1b[2J\r\nBcc: x@example.com")
    shown = data["request"]["justification"]
    assert "\x1b" not in shown
    assert "\r" not in shown
    assert shown == WHY + "\\x1b[2J\\r\\nBcc: x@example.com"
    assert data["review"]["justification"] == shown
    assert audit(world, "break_glass.used")[0]["details"]["justification"] == shown
    wait_until(lambda: world.inbox.subjects("BREAK-GLASS"), "the break-glass e-mails")
    world.settle()
    for mail in world.inbox.subjects("BREAK-GLASS"):
        assert "\x1b" not in mail.body
        assert shown in mail.body
        assert "Bcc" not in mail.message
        assert len(mail.rcpt_tos) == 1


def test_control_characters_do_not_count_towards_the_minimum_length(
    world: World, pubkey: str
) -> None:
    """Five NULs escape to twenty characters ("\\x00" each) but say nothing: 3 letters."""
    before = state(world)
    data = problem(break_glass(world, pubkey, justification="fix" + "\x00" * 5), 400)
    assert "at least 20 characters" in data["detail"]
    assert state(world) == before


def test_a_non_member_with_a_bad_body_learns_nothing_about_it_first(
    world: World, pubkey: str
) -> None:
    """Membership is checked before the duration and justification: mallory gets 403."""
    before = state(world)
    problem(break_glass(world, pubkey, "mallory", duration="PT9H", justification="x"), 403)
    assert state(world) == before


def test_an_oversized_body_field_is_400(world: World, pubkey: str) -> None:
    before = state(world)
    problem(break_glass(world, pubkey, justification="x" * 20_001), 400)
    problem(break_glass(world, pubkey, target="d" * 65), 400)
    assert state(world) == before


def test_a_body_that_is_not_json_is_400(world: World) -> None:
    before = state(world)
    response = world.api.post(
        "alice",
        "/v1/break-glass",
        content=b'{"role": "db-admin", ',
        headers={"Content-Type": "application/json"},
    )
    problem(response, 400)
    assert state(world) == before


@pytest.mark.parametrize(
    ("sent", "status", "says"),
    [
        ({"comment": ""}, 400, "comment"),
        ({"comment": "  \n "}, 400, "comment"),
        ({"comment": ...}, 400, "comment"),
        ({"comment": "x" * 2001}, 400, "comment"),
        ({"verdict": "fine"}, 400, "verdict"),
        ({"verdict": "JUSTIFIED"}, 400, "verdict"),
        ({"verdict": ...}, 400, "verdict"),
        ({"closed_by": "sam"}, 400, "closed_by"),
    ],
    ids=[
        "comment-empty",
        "comment-blank",
        "comment-missing",
        "comment-too-long",
        "verdict-unknown",
        "verdict-wrong-case",
        "verdict-missing",
        "extra-field",
    ],
)
def test_hostile_review_close_is_refused_and_the_review_stays_open(
    world: World, pubkey: str, sent: dict[str, Any], status: int, says: str
) -> None:
    rid = used(world, pubkey)["review"]["id"]
    before = state(world)
    data = problem(close(world, "carol", rid, **sent), status)
    assert says in data["detail"], data
    assert state(world) == before
    assert [(r["id"], r["status"]) for r in reviews(world)] == [(rid, "open")]
    assert audit(world, "break_glass.review_closed") == []


def test_closing_an_unknown_review_is_404(world: World) -> None:
    before = state(world)
    problem(close(world, "sam", "pir_doesnotexist"), 404)
    problem(close(world, "sam", "../../v1/requests"), 404)
    assert state(world) == before


# --- the CLI against a live server ------------------------------------------------------------


def test_cli_break_glass_reviews_and_report(
    live_server: str, pubkey_path: Path, inbox: Inbox
) -> None:
    out = succeeded(
        cli(
            live_server,
            "alice",
            "break-glass",
            "db-admin",
            "-t",
            "db-1",
            "-j",
            WHY,
            "--ssh-key",
            str(pubkey_path),
        )
    )
    assert "BREAK-GLASS (review skipped)" in out
    assert "decision   auto_approve by rule break-glass" in out
    assert "rules" not in out.splitlines()  # no rule was evaluated: no empty heading
    cert_path = pubkey_path.with_name("id_ed25519-cert.pub")
    assert f"certificate written to {cert_path}" in " ".join(out.split())
    assert cert_path.read_text().startswith("ssh-ed25519-cert-v01@openssh.com ")
    assert oct(cert_path.stat().st_mode & 0o777) == "0o644"

    listed = json.loads(succeeded(cli(live_server, "carol", "-o", "json", "reviews")))
    [review] = listed["items"]
    assert (review["user"], review["role"], review["target"], review["status"]) == (
        "alice",
        "db-admin",
        "db-1",
        "open",
    )
    assert review["id"] in out

    refused = run(
        "reviews", "close", review["id"], "--verdict", "justified", "-m", "fine by me",
        url=live_server, user="alice",
    )  # fmt: skip
    assert refused.returncode == 4, (refused.stdout, refused.stderr)
    assert "someone else" in refused.stderr
    still = json.loads(succeeded(cli(live_server, "carol", "-o", "json", "reviews")))
    assert [r["status"] for r in still["items"]] == ["open"]

    report = succeeded(cli(live_server, "sam", "report", "break-glass"))
    assert "break-glass uses 1 (online 1, offline 0)" in " ".join(report.split())
    assert review["id"] in report
    denied = run("report", "break-glass", url=live_server, user="alice")
    assert denied.returncode == 4, (denied.stdout, denied.stderr)

    closed = succeeded(
        cli(
            live_server, "carol", "reviews", "close", review["id"],
            "--verdict", "justified", "-m", "primary was down",
        )
    )  # fmt: skip
    assert "verdict    justified by carol" in closed
    assert json.loads(succeeded(cli(live_server, "carol", "-o", "json", "reviews"))) == {
        "items": []
    }
    wait_until(
        lambda: {m.to for m in inbox.subjects("BREAK-GLASS")} >= TOLD, "the break-glass e-mails"
    )


def test_cli_non_member_exits_4_and_writes_no_certificate(
    live_server: str, pubkey_path: Path
) -> None:
    result = run(
        "break-glass", "db-admin", "-t", "db-1", "-j", WHY, "--ssh-key", str(pubkey_path),
        url=live_server, user="mallory",
    )  # fmt: skip
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert "breakglass-db" in result.stderr
    assert not pubkey_path.with_name("id_ed25519-cert.pub").exists()


def test_cli_duration_above_the_cap_exits_2_and_writes_no_certificate(
    live_server: str, pubkey_path: Path
) -> None:
    result = run(
        "break-glass", "db-admin", "-t", "db-1", "-j", WHY, "--for", "2h",
        "--ssh-key", str(pubkey_path), url=live_server, user="alice",
    )  # fmt: skip
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "cap" in result.stderr
    assert not pubkey_path.with_name("id_ed25519-cert.pub").exists()
