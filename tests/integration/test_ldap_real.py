"""Real OpenLDAP: grants add and remove group membership, verified by reading slapd back."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import ldap
import ldap.dn
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from keyturn import bootstrap
from keyturn.bootstrap import App
from keyturn.config import normalize_dn
from keyturn.domain.errors import ConfigError
from keyturn.entrypoints import worker
from keyturn.entrypoints.api.app import create_app
from keyturn.lab import Slapd, child_dn, free_port
from tests.conftest import LDAP_PASSWORD_ENV, TOKENS, example_data, ldap_env, load

with warnings.catch_warnings():
    # Starlette >= 1.x warns at import when the TestClient runs on httpx rather than httpx2;
    # the project depends on httpx, so this one import-time notice is expected.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

KEYTURN = str(Path(sys.executable).parent / "keyturn")
DB_ADMINS = "cn=db-admins,ou=groups,dc=example,dc=org"
APP_DEPLOYERS = "cn=app-deployers,ou=groups,dc=example,dc=org"
ATTRIBUTE = {DB_ADMINS: "member", APP_DEPLOYERS: "uniqueMember"}
ROLE_GROUP = {"db-admins": DB_ADMINS, "app-deployer": APP_DEPLOYERS}
EXTRA_USERS = ("hostile", "zoe")
ALL_TOKENS = TOKENS | {u: f"test-token-{u}" for u in EXTRA_USERS}
DEADLINE = 60.0  # seconds: the longest any poll in this file waits (generous: CI machines are busy)


# --- the directory, read as root ----------------------------------------------------------------
def user_dn(slapd: Slapd, uid: str) -> str:
    """``uid=<uid>,ou=people,...`` escaped per RFC 4514."""
    return child_dn("uid", uid, slapd.people_base)


def read(slapd: Slapd, dn: str, attribute: str) -> set[str]:
    """One attribute's values of one entry, as normalised DNs."""
    conn = slapd.connect()
    try:
        found = conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", [attribute])
    finally:
        conn.unbind_s()
    return {
        normalize_dn(value.decode())
        for _dn, attrs in found
        for name, values in attrs.items()
        if name.lower() == attribute.lower()
        for value in values
    }


def members(slapd: Slapd, group: str) -> set[str]:
    """The group's members (its own member attribute), as normalised DNs."""
    return read(slapd, group, ATTRIBUTE[group])


def modify(slapd: Slapd, group: str, op: int, dn: str) -> None:
    """Add (``ldap.MOD_ADD``) or delete a member by hand, as root (not through Keyturn)."""
    conn = slapd.connect()
    try:
        conn.modify_s(group, [(op, ATTRIBUTE[group], [dn.encode()])])
    finally:
        conn.unbind_s()


def n(dn: str) -> str:
    """Shorthand for :func:`normalize_dn`."""
    return normalize_dn(dn)


def wait_for(what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# --- Keyturn over HTTP --------------------------------------------------------------------------
@dataclass
class Keyturn:
    """The real app (SQLite store, real slapd) behind a TestClient, with helpers."""

    app: App
    client: TestClient
    slapd: Slapd

    def call(self, user: str | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if user is not None:
            headers["Authorization"] = f"Bearer {ALL_TOKENS[user]}"
        response: httpx.Response = self.client.request(method, path, headers=headers, **kwargs)
        return response

    def get(self, user: str | None, path: str, **kwargs: Any) -> httpx.Response:
        return self.call(user, "GET", path, **kwargs)

    def post(self, user: str | None, path: str, **kwargs: Any) -> httpx.Response:
        return self.call(user, "POST", path, **kwargs)

    def request(self, user: str, role: str = "db-admins", duration: str = "PT5M") -> dict[str, Any]:
        """Request a directory role on corp-directory; return the grant (auto-approved)."""
        body = {
            "role": role,
            "target": "corp-directory",
            "duration": duration,
            "justification": "INC-4711 database on fire",
        }
        response = self.post(user, "/v1/requests", json=body)
        assert response.status_code == 201, response.text
        data = response.json()
        assert data["status"] == "approved", data
        assert data["grant"] is not None, data
        grant: dict[str, Any] = data["grant"]
        return grant

    def grants(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every grant (seen by the admin sam), optionally in one state."""
        params: dict[str, Any] = {"limit": 1000}
        if status is not None:
            params["status"] = status
        response = self.get("sam", "/v1/grants", params=params)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def grant(self, grant_id: str) -> dict[str, Any]:
        """One grant, as the admin sees it."""
        return next(g for g in self.grants() if g["id"] == grant_id)

    def events(
        self, action: str | None = None, grant_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Audit events (as sam), filtered by action and by the grant they are about."""
        response = self.get("sam", "/v1/audit", params={"limit": 10_000})
        assert response.status_code == 200, response.text
        return [
            e
            for e in response.json()["items"]
            if (action is None or e["action"] == action)
            and (grant_id is None or e["subject"].get("grant_id") == grant_id)
        ]

    def event(self, action: str, grant_id: str) -> dict[str, Any]:
        """The one event ``action`` of this grant."""
        found = self.events(action, grant_id)
        assert len(found) == 1, (action, grant_id, found)
        return found[0]

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of ``GET /metrics`` (None if absent)."""
        response = self.get(None, "/metrics")
        assert response.status_code == 200, response.text
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return None

    def reconcile(self, *, dry_run: bool = False) -> dict[str, Any]:
        """``POST /v1/reconcile`` as sam."""
        response = self.post("sam", "/v1/reconcile", json={"dry_run": dry_run})
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        assert data["errors"] == [], data
        return data

    def run_worker_until(self, what: str, check: Callable[[], Any]) -> Any:
        """Run worker passes (``run_once``) until ``check`` holds."""

        def step() -> Any:
            worker.run_once(self.app)
            return check()

        return wait_for(what, step)


def _with_extra_user(data: dict[str, Any], uid: str, **fields: Any) -> None:
    """Add a configured user (eligible through group sre) with a test token."""
    token = ALL_TOKENS[uid]
    data["users"].append(
        {
            "id": uid,
            "name": f"User {uid}",
            "groups": ["sre"],
            "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
            **fields,
        }
    )


@pytest.fixture
def start(tmp_path: Path, slapd: Slapd) -> Iterator[Callable[..., Keyturn]]:
    """Build Keyturn against the test's slapd (``change`` edits the config dict first)."""
    with contextlib.ExitStack() as stack:

        def make(
            change: Callable[[dict[str, Any]], None] | None = None,
            environ: dict[str, str] | None = None,
        ) -> Keyturn:
            data = example_data(tmp_path, ldap_url=slapd.url)
            if change is not None:
                change(data)
            app = bootstrap.build(
                load(data), environ=ldap_env(slapd) if environ is None else environ
            )
            stack.callback(app.close)
            client = stack.enter_context(TestClient(create_app(app)))
            return Keyturn(app, client, slapd)

        yield make


@pytest.fixture
def kt(start: Callable[..., Keyturn]) -> Keyturn:
    """Keyturn with the example configuration."""
    return start()


def fast_worker(data: dict[str, Any]) -> None:
    """Worker timings for tests: short sleeps and quick revocation retries."""
    data["server"].update(worker_max_sleep="PT0.1S", retry_initial="PT0.2S", retry_max="PT1S")


@contextlib.contextmanager
def worker_thread(app: App) -> Iterator[None]:
    """The expiry worker loop in a thread, stopped and joined on exit."""
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(app, stop), name="test-worker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=DEADLINE)
        assert not thread.is_alive()


@dataclass
class Webhook:
    """A loopback HTTP receiver of alert POSTs."""

    url: str
    received: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """A tiny ``http.server`` on a free loopback port recording JSON POST bodies."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="test-webhook", daemon=True)
    thread.start()
    try:
        yield Webhook(f"http://127.0.0.1:{server.server_address[1]}/alerts", received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- 1. grants are visible in the directory -----------------------------------------------------
@pytest.mark.parametrize("role", ["db-admins", "app-deployer"])
def test_grant_adds_the_member_to_the_group_in_slapd(kt: Keyturn, slapd: Slapd, role: str) -> None:
    """An active grant's member DN is in the group (member/uniqueMember), read from slapd."""
    group = ROLE_GROUP[role]
    alice = user_dn(slapd, "alice")
    grant = kt.request("alice", role)
    assert grant["status"] == "active", grant
    assert members(slapd, group) == {n(alice), n(user_dn(slapd, "svc-backup"))}
    if group == DB_ADMINS:  # the memberof overlay reflects groupOfNames only
        assert n(group) in read(slapd, alice, "memberOf")
    creds = grant["credentials"]
    assert n(creds["ldap_group"]) == n(group)
    assert creds["ldap_attribute"] == ATTRIBUTE[group]
    assert n(creds["ldap_member"]) == n(alice)
    assert grant["privilege"] == n(group)
    issued = kt.event("grant.issued", grant["id"])
    assert issued["details"]["verified"] is True
    assert issued["details"]["already_present"] is False


# --- 2. revocation is verified ------------------------------------------------------------------
@pytest.mark.parametrize("role", ["db-admins", "app-deployer"])
def test_release_removes_the_member_from_slapd(kt: Keyturn, slapd: Slapd, role: str) -> None:
    """Release: alice is gone from the group in slapd, the grant revoked, the event verified."""
    group = ROLE_GROUP[role]
    grant = kt.request("alice", role)
    assert n(user_dn(slapd, "alice")) in members(slapd, group)
    response = kt.post("alice", f"/v1/grants/{grant['id']}/release")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "revoked"
    assert members(slapd, group) == {n(user_dn(slapd, "svc-backup"))}
    assert n(group) not in read(slapd, user_dn(slapd, "alice"), "memberOf")
    done = kt.grant(grant["id"])
    assert (done["status"], done["end_reason"], done["ended_by"]) == (
        "revoked",
        "released",
        "alice",
    )
    released = kt.event("grant.released", grant["id"])
    assert released["details"]["verified"] is True
    assert released["details"]["already_gone"] is False


def test_expiry_removes_the_member_and_records_the_lag(kt: Keyturn, slapd: Slapd) -> None:
    """A PT2S grant is removed from slapd by the worker; grant.expired carries lag_ms."""
    grant = kt.request("alice", duration="PT2S")
    assert n(user_dn(slapd, "alice")) in members(slapd, DB_ADMINS)
    kt.run_worker_until("expiry", lambda: kt.grant(grant["id"])["status"] == "revoked")
    assert n(user_dn(slapd, "alice")) not in members(slapd, DB_ADMINS)
    assert kt.grant(grant["id"])["end_reason"] == "expired"
    expired = kt.event("grant.expired", grant["id"])
    assert expired["details"]["verified"] is True
    assert isinstance(expired["details"]["lag_ms"], int)
    assert 0 <= expired["details"]["lag_ms"] < DEADLINE * 1000


# --- 3. overlapping grants keep the membership (AWS TEAM #279) ----------------------------------
def test_overlapping_grants_keep_membership_until_the_last_ends(kt: Keyturn, slapd: Slapd) -> None:
    """Two grants of db-admins: releasing the first keeps alice a member; the second removes her."""
    alice = n(user_dn(slapd, "alice"))
    first = kt.request("alice")
    second = kt.request("alice")
    assert second["status"] == "active"
    assert kt.event("grant.issued", second["id"])["details"]["already_present"] is True

    assert kt.post("alice", f"/v1/grants/{first['id']}/release").json()["status"] == "revoked"
    assert alice in members(slapd, DB_ADMINS)
    assert kt.event("grant.released", first["id"])["details"]["kept_for"] == [second["id"]]

    assert kt.post("alice", f"/v1/grants/{second['id']}/release").json()["status"] == "revoked"
    assert alice not in members(slapd, DB_ADMINS)
    assert kt.event("grant.released", second["id"])["details"]["verified"] is True


# --- 4. idempotence against the real directory --------------------------------------------------
def test_membership_added_by_hand_before_the_grant_is_already_present(
    kt: Keyturn, slapd: Slapd
) -> None:
    """Alice already in the group: the grant is active with already_present true."""
    modify(slapd, DB_ADMINS, ldap.MOD_ADD, user_dn(slapd, "alice"))
    grant = kt.request("alice")
    assert grant["status"] == "active"
    issued = kt.event("grant.issued", grant["id"])
    assert issued["details"]["already_present"] is True
    assert issued["details"]["verified"] is True
    assert n(user_dn(slapd, "alice")) in members(slapd, DB_ADMINS)


def test_membership_removed_by_hand_before_release_is_already_gone(
    kt: Keyturn, slapd: Slapd
) -> None:
    """Alice removed by hand: release still ends revoked and verified, with already_gone true."""
    grant = kt.request("alice")
    modify(slapd, DB_ADMINS, ldap.MOD_DELETE, user_dn(slapd, "alice"))
    response = kt.post("alice", f"/v1/grants/{grant['id']}/release")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "revoked"
    released = kt.event("grant.released", grant["id"])
    assert released["details"]["already_gone"] is True
    assert released["details"]["verified"] is True
    assert n(user_dn(slapd, "alice")) not in members(slapd, DB_ADMINS)


# --- 5. hostile input and failures --------------------------------------------------------------
@pytest.mark.parametrize(
    "login",
    ["*)(uid=*))(|(uid=*", "a\\00b", "(", ")"],
    ids=["filter-injection", "backslash-00", "open-paren", "close-paren"],
)
def test_filter_metacharacters_in_a_login_match_exactly_that_entry(
    start: Callable[..., Keyturn], slapd: Slapd, login: str
) -> None:
    """A login full of RFC 4515 metacharacters adds exactly its own entry, and removes it."""
    kt = start(lambda d: _with_extra_user(d, "hostile", directory_login=login))
    own = n(slapd.add_user(login))
    before = members(slapd, DB_ADMINS)
    grant = kt.request("hostile")
    assert grant["status"] == "active", grant
    assert members(slapd, DB_ADMINS) == before | {own}
    assert n(grant["credentials"]["ldap_member"]) == own
    assert kt.post("hostile", f"/v1/grants/{grant['id']}/release").json()["status"] == "revoked"
    assert members(slapd, DB_ADMINS) == before


def test_wildcard_login_matching_nobody_fails_and_changes_nothing(
    start: Callable[..., Keyturn], slapd: Slapd
) -> None:
    """directory_login '*' is searched literally: no such uid, so the grant fails."""
    kt = start(lambda d: _with_extra_user(d, "hostile", directory_login="*"))
    before = members(slapd, DB_ADMINS)
    grant = kt.request("hostile")
    assert grant["status"] == "failed", grant
    assert "does not exist in the directory" in grant["last_error"]
    assert "refusing to guess" not in grant["last_error"]  # '*' did not match everyone
    assert members(slapd, DB_ADMINS) == before


@pytest.mark.parametrize("role", ["db-admins", "app-deployer"])
def test_dn_metacharacters_in_a_uid_are_added_and_removed(
    start: Callable[..., Keyturn], slapd: Slapd, role: str
) -> None:
    """A uid with , + = " < > ; # is added to and removed from the group, read back from slapd."""
    uid = 'a,b+c="d"<e>;#f'
    group = ROLE_GROUP[role]
    kt = start(lambda d: _with_extra_user(d, "hostile", directory_login=uid))
    own = n(slapd.add_user(uid))
    before = members(slapd, group)
    grant = kt.request("hostile", role)
    assert grant["status"] == "active", grant
    assert members(slapd, group) == before | {own}
    assert kt.reconcile()["findings"] == []  # the granted DN is recognised, not "standing"
    assert ldap.dn.str2dn(grant["credentials"]["ldap_member"])[0] == [("uid", uid, ldap.AVA_STRING)]
    assert kt.post("hostile", f"/v1/grants/{grant['id']}/release").json()["status"] == "revoked"
    assert members(slapd, group) == before
    assert kt.event("grant.released", grant["id"])["details"]["verified"] is True


def test_role_naming_a_group_off_the_allowlist_is_a_config_error(tmp_path: Path) -> None:
    """A role whose group is not on ldap.groups is refused, naming roles[..].ldap.group."""
    data = example_data(tmp_path, ldap_url="ldap://127.0.0.1:389")
    index = next(i for i, r in enumerate(data["roles"]) if r["name"] == "db-admins")
    data["roles"][index]["ldap"]["group"] = "cn=domain-admins,ou=groups,dc=example,dc=org"
    with pytest.raises(ConfigError) as caught:
        load(data)
    assert caught.value.details["path"] == f"roles[{index}].ldap.group"
    assert "allowlist" in caught.value.message


@pytest.mark.parametrize("who", ["zoe", "alice"])
def test_user_absent_from_the_directory_fails_and_changes_nothing(
    start: Callable[..., Keyturn], slapd: Slapd, who: str
) -> None:
    """A Keyturn user with no directory entry (zoe; alice deleted) gets a failed grant."""
    kt = start(lambda d: _with_extra_user(d, "zoe"))
    if who == "alice":
        conn = slapd.connect()
        try:
            conn.delete_s(user_dn(slapd, "alice"))
        finally:
            conn.unbind_s()
    before = members(slapd, DB_ADMINS)
    grant = kt.request(who)
    assert grant["status"] == "failed", grant
    assert f"user {who} (uid='{who}') does not exist in the directory" in grant["last_error"]
    assert members(slapd, DB_ADMINS) == before
    assert kt.event("grant.failed", grant["id"])["details"]["error"] == grant["last_error"]


def test_refused_bind_makes_readiness_fail(start: Callable[..., Keyturn], slapd: Slapd) -> None:
    """Wrong bind password: readiness names the bind, /readyz answers 503 with that check."""
    kt = start(environ={LDAP_PASSWORD_ENV: "not-the-password"})
    check = kt.app.readiness()["ldap"]
    assert check.startswith("failed"), check
    assert "bind" in check
    response = kt.get(None, "/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["ldap"] == check
    assert response.json()["checks"]["store"] == "ok"


def test_refused_bind_is_reported_by_keyturn_serve_at_start(tmp_path: Path, slapd: Slapd) -> None:
    """A real `keyturn serve` with a wrong bind password says 'provider ldap is NOT ready'."""
    port = free_port()
    data = example_data(tmp_path, ldap_url=slapd.url)
    data["server"]["port"] = port
    config = tmp_path / "keyturn.yaml"
    config.write_text(yaml.safe_dump(data))
    env = dict(os.environ) | {LDAP_PASSWORD_ENV: "not-the-password"}
    stderr_path = tmp_path / "serve.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [KEYTURN, "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:

            def ready() -> httpx.Response | None:
                assert proc.poll() is None, stderr_path.read_text()
                try:
                    return http.get("/readyz")
                except httpx.TransportError:
                    return None

            response = wait_for("keyturn serve to answer", ready, timeout=30)
        assert response.status_code == 503
        assert response.json()["checks"]["ldap"].startswith("failed")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    text = " ".join(stderr_path.read_text().split())  # rich may wrap long lines
    assert "keyturn: provider ldap is NOT ready: failed:" in text, text
    assert "refused Keyturn's bind" in text
    assert "not-the-password" not in text


def test_directory_down_at_grant_time_fails_the_grant_and_adds_nothing(
    kt: Keyturn, slapd: Slapd
) -> None:
    """slapd stopped: the grant fails naming the directory; after a restart nothing was added."""
    before = members(slapd, DB_ADMINS)
    slapd.stop()
    grant = kt.request("alice")
    assert grant["status"] == "failed", grant
    assert "directory is unreachable" in grant["last_error"]
    slapd.start()
    assert members(slapd, DB_ADMINS) == before
    assert kt.events("grant.issued") == []


def test_directory_restart_between_grant_and_release_is_reconnected(
    kt: Keyturn, slapd: Slapd
) -> None:
    """slapd restarted under an open connection: the release reconnects and succeeds at once."""
    grant = kt.request("alice")
    slapd.stop()
    slapd.start()
    response = kt.post("alice", f"/v1/grants/{grant['id']}/release")
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["attempts"]) == ("revoked", 1)
    assert kt.events("grant.revoke_failed", grant["id"]) == []
    assert n(user_dn(slapd, "alice")) not in members(slapd, DB_ADMINS)


def test_missing_bind_password_variable_is_a_config_error(tmp_path: Path, slapd: Slapd) -> None:
    """No KEYTURN_LDAP_PASSWORD in the environment: build refuses, naming the variable."""
    loaded = load(example_data(tmp_path, ldap_url=slapd.url))
    with pytest.raises(ConfigError) as caught:
        bootstrap.build(loaded, environ={})
    assert LDAP_PASSWORD_ENV in caught.value.message
    assert caught.value.details["path"] == "ldap.bind_password_env"


# --- 6. a directory outage is survived ----------------------------------------------------------
def test_outage_alerts_then_revocations_complete_after_restart(
    start: Callable[..., Keyturn], slapd: Slapd, webhook: Webhook
) -> None:
    """slapd down at expiry: revoke_failed, alerts (audit, metric, webhook); back up: revoked."""

    def change(data: dict[str, Any]) -> None:
        fast_worker(data)
        data["notifier"] = {"webhook_url": webhook.url}

    kt = start(change)
    alice = kt.request("alice", duration="PT2S")
    bob = kt.request("bob", role="app-deployer", duration="PT2S")
    ids = {alice["id"], bob["id"]}
    slapd.stop()

    kt.run_worker_until(
        "both grants to be revoke_failed",
        lambda: {g["id"] for g in kt.grants("revoke_failed")} == ids,
    )
    for grant_id in ids:
        failed = kt.grant(grant_id)
        assert "directory is unreachable" in failed["last_error"]
        assert failed["retry_at"] is not None
        assert len(kt.events("alert.revoke_failed", grant_id)) == 1
    assert kt.metric("keyturn_revoke_failed_alerts_total", provider="ldap") == 2

    def alerts() -> list[dict[str, Any]]:
        return [p for p in webhook.received if p["kind"] == "alert"]

    wait_for("two webhook alerts", lambda: len(alerts()) >= 2)
    assert {p["details"]["grant_id"] for p in alerts()} == ids
    assert {p["event"] for p in alerts()} == {"revoke_failed"}
    assert {p["source"] for p in webhook.received} == {"keyturn"}

    slapd.start()
    restarted = time.monotonic()
    with worker_thread(kt.app):
        wait_for(
            "both grants to be revoked",
            lambda: {g["id"] for g in kt.grants("revoked")} == ids,
        )
    took = time.monotonic() - restarted
    assert took < 5, f"revocations completed {took:.1f}s after the directory came back"
    assert members(slapd, DB_ADMINS) == {n(user_dn(slapd, "svc-backup"))}
    assert members(slapd, APP_DEPLOYERS) == {n(user_dn(slapd, "svc-backup"))}
    for grant_id in ids:
        assert kt.event("grant.expired", grant_id)["details"]["verified"] is True
    assert kt.grants("revoke_failed") == []


# --- 7. standing members are found --------------------------------------------------------------
def _findings(report: dict[str, Any], identity: str) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["identity"] == identity]


def test_standing_member_of_a_report_mode_group_is_reported_not_removed(
    kt: Keyturn, slapd: Slapd
) -> None:
    """mallory added by hand to db-admins (report mode): reported as standing, still a member."""
    mallory = n(user_dn(slapd, "mallory"))
    modify(slapd, DB_ADMINS, ldap.MOD_ADD, user_dn(slapd, "mallory"))
    report = kt.reconcile()
    assert _findings(report, mallory) == [
        {
            "kind": "standing",
            "provider": "ldap",
            "privilege": n(DB_ADMINS),
            "identity": mallory,
            "user_id": "mallory",
            "action": "reported",
        }
    ]
    assert _findings(report, n(user_dn(slapd, "svc-backup"))) == []
    assert report["standing"] == {n(DB_ADMINS): 1, n(APP_DEPLOYERS): 0}
    assert mallory in members(slapd, DB_ADMINS)
    finding = kt.events("reconcile.finding")
    assert [(e["subject"]["user_id"], e["details"]["action"]) for e in finding] == [
        ("mallory", "reported")
    ]


def test_standing_member_of_an_enforce_mode_group_is_removed(kt: Keyturn, slapd: Slapd) -> None:
    """carol added by hand to app-deployers (enforce mode): removed from slapd."""
    carol = n(user_dn(slapd, "carol"))
    modify(slapd, APP_DEPLOYERS, ldap.MOD_ADD, user_dn(slapd, "carol"))
    report = kt.reconcile()
    [finding] = _findings(report, carol)
    assert (finding["kind"], finding["action"], finding["user_id"]) == (
        "standing",
        "removed",
        "carol",
    )
    assert finding["privilege"] == n(APP_DEPLOYERS)
    assert members(slapd, APP_DEPLOYERS) == {n(user_dn(slapd, "svc-backup"))}
    assert _findings(kt.reconcile(), carol) == []


def test_granted_and_allowlisted_members_are_never_findings(kt: Keyturn, slapd: Slapd) -> None:
    """alice (live grant) and svc-backup (allowlisted) hold both groups: nothing is found."""
    kt.request("alice")
    kt.request("alice", role="app-deployer")
    report = kt.reconcile()
    assert report["findings"] == []
    assert report["standing"] == {n(DB_ADMINS): 0, n(APP_DEPLOYERS): 0}
    assert n(user_dn(slapd, "alice")) in members(slapd, APP_DEPLOYERS)


def test_dry_run_reconciliation_changes_and_records_nothing(kt: Keyturn, slapd: Slapd) -> None:
    """A dry run says 'would remove' but leaves slapd, the audit trail and the report alone."""
    modify(slapd, APP_DEPLOYERS, ldap.MOD_ADD, user_dn(slapd, "carol"))
    modify(slapd, DB_ADMINS, ldap.MOD_ADD, user_dn(slapd, "mallory"))
    before = (members(slapd, DB_ADMINS), members(slapd, APP_DEPLOYERS), len(kt.events()))
    report = kt.reconcile(dry_run=True)
    assert report["dry_run"] is True
    actions = {f["user_id"]: f["action"] for f in report["findings"]}
    assert actions == {"carol": "would remove", "mallory": "reported"}
    assert (members(slapd, DB_ADMINS), members(slapd, APP_DEPLOYERS), len(kt.events())) == before
    standing = kt.get("sam", "/v1/reports/standing").json()
    assert standing == {"privileges": [], "history": []}


def test_standing_report_shows_counts_and_history_to_admins_only(kt: Keyturn, slapd: Slapd) -> None:
    """GET /v1/reports/standing: latest count per group and one history point per run."""
    modify(slapd, DB_ADMINS, ldap.MOD_ADD, user_dn(slapd, "mallory"))
    kt.reconcile()
    modify(slapd, DB_ADMINS, ldap.MOD_ADD, user_dn(slapd, "carol"))
    kt.reconcile()
    response = kt.get("sam", "/v1/reports/standing")
    assert response.status_code == 200, response.text
    data = response.json()
    latest = {p["privilege"]: (p["count"], sorted(p["members"])) for p in data["privileges"]}
    assert latest == {
        n(DB_ADMINS): (2, sorted([n(user_dn(slapd, "carol")), n(user_dn(slapd, "mallory"))])),
        n(APP_DEPLOYERS): (0, []),
    }
    history = [(h["privilege"], h["count"]) for h in data["history"]]
    assert sorted(history) == sorted(
        [(n(DB_ADMINS), 1), (n(APP_DEPLOYERS), 0), (n(DB_ADMINS), 2), (n(APP_DEPLOYERS), 0)]
    )
    for path, method in (("/v1/reports/standing", "GET"), ("/v1/reconcile", "POST")):
        refused = kt.call("alice", method, path)
        assert refused.status_code == 403, (path, refused.text)
        assert refused.json()["type"].endswith("/forbidden")
    assert n(user_dn(slapd, "mallory")) in members(slapd, DB_ADMINS)


def test_lingering_membership_is_removed_even_in_report_mode(kt: Keyturn, slapd: Slapd) -> None:
    """alice re-added by hand after her grant ended: 'lingering', removed from db-admins."""
    grant = kt.request("alice")
    assert kt.post("alice", f"/v1/grants/{grant['id']}/release").json()["status"] == "revoked"
    modify(slapd, DB_ADMINS, ldap.MOD_ADD, user_dn(slapd, "alice"))
    alice = n(user_dn(slapd, "alice"))
    [finding] = _findings(kt.reconcile(), alice)
    assert (finding["kind"], finding["action"], finding["user_id"]) == (
        "lingering",
        "removed",
        "alice",
    )
    assert alice not in members(slapd, DB_ADMINS)


def test_missing_membership_of_an_active_grant_is_restored(kt: Keyturn, slapd: Slapd) -> None:
    """alice removed by hand while her grant is active: 'missing', restored in slapd."""
    kt.request("alice")
    modify(slapd, DB_ADMINS, ldap.MOD_DELETE, user_dn(slapd, "alice"))
    alice = n(user_dn(slapd, "alice"))
    [finding] = _findings(kt.reconcile(), alice)
    assert (finding["kind"], finding["action"], finding["user_id"]) == (
        "missing",
        "restored",
        "alice",
    )
    assert alice in members(slapd, DB_ADMINS)


def test_failed_grant_leaves_a_standing_membership_standing(kt: Keyturn, slapd: Slapd) -> None:
    """dave, a standing member of db-admins whose grant failed untouched, is still 'standing'."""
    dave = n(user_dn(slapd, "dave"))
    modify(slapd, DB_ADMINS, ldap.MOD_ADD, user_dn(slapd, "dave"))
    slapd.stop()
    grant = kt.request("dave")
    assert grant["status"] == "failed", grant
    slapd.start()
    assert dave in members(slapd, DB_ADMINS)  # the failed grant changed nothing
    report = kt.reconcile()
    assert [(f["kind"], f["action"]) for f in _findings(report, dave)] == [("standing", "reported")]
    assert report["standing"][n(DB_ADMINS)] == 1
    assert dave in members(slapd, DB_ADMINS)  # report mode: never removed


# --- 8. extension -------------------------------------------------------------------------------
def test_extension_moves_not_after_and_never_removes_the_membership(
    kt: Keyturn, slapd: Slapd
) -> None:
    """PT10M more: not_after moves by 10 minutes; alice stays a member throughout."""
    alice = n(user_dn(slapd, "alice"))
    grant = kt.request("alice", duration="PT30M")
    assert alice in members(slapd, DB_ADMINS)
    response = kt.post("alice", f"/v1/grants/{grant['id']}/extend", json={"duration": "PT10M"})
    assert response.status_code == 200, response.text
    extended = response.json()
    assert parse_time(extended["not_after"]) - parse_time(grant["not_after"]) == timedelta(
        minutes=10
    )
    assert extended["status"] == "active"
    assert extended["credentials"] == grant["credentials"]
    worker.run_once(kt.app)
    assert alice in members(slapd, DB_ADMINS)
    assert kt.grant(grant["id"])["not_after"] == extended["not_after"]
    assert kt.events("grant.revoking", grant["id"]) == []
    assert kt.event("grant.extended", grant["id"])["details"]["extra_s"] == 600


def test_extension_beyond_the_role_maximum_is_refused(kt: Keyturn, slapd: Slapd) -> None:
    """30 min + 2 h exceeds db-admins' PT2H: 400 problem, nothing changed."""
    grant = kt.request("alice", duration="PT30M")
    response = kt.post("alice", f"/v1/grants/{grant['id']}/extend", json={"duration": "PT2H"})
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "at most" in response.json()["detail"]
    after = kt.grant(grant["id"])
    assert (after["status"], after["not_after"]) == ("active", grant["not_after"])
    assert kt.events("grant.extended", grant["id"]) == []
    assert n(user_dn(slapd, "alice")) in members(slapd, DB_ADMINS)


def test_extending_someone_elses_grant_is_forbidden(kt: Keyturn, slapd: Slapd) -> None:
    """bob cannot extend alice's grant: 403, nothing changed."""
    grant = kt.request("alice", duration="PT30M")
    response = kt.post("bob", f"/v1/grants/{grant['id']}/extend", json={"duration": "PT10M"})
    assert response.status_code == 403, response.text
    assert kt.grant(grant["id"])["not_after"] == grant["not_after"]
    assert kt.events("grant.extended") == []


@pytest.mark.parametrize("worker_ran", [False, True], ids=["past-not-after", "revoked"])
def test_extending_an_expired_grant_is_a_conflict(
    kt: Keyturn, slapd: Slapd, worker_ran: bool
) -> None:
    """An expired grant (window passed, or already revoked by the worker) cannot be extended."""
    grant = kt.request("alice", duration="PT1S")
    end = parse_time(grant["not_after"])
    wait_for("the window to close", lambda: datetime.now(end.tzinfo) > end)
    if worker_ran:
        kt.run_worker_until("expiry", lambda: kt.grant(grant["id"])["status"] == "revoked")
    response = kt.post("alice", f"/v1/grants/{grant['id']}/extend", json={"duration": "PT10M"})
    assert response.status_code == 409, response.text
    assert kt.events("grant.extended") == []


# --- 9. metrics ---------------------------------------------------------------------------------
def test_metrics_count_a_verified_release(kt: Keyturn) -> None:
    """/metrics after a release: one ldap revocation succeeded, one grant revoked."""
    grant = kt.request("alice")
    assert kt.metric("keyturn_grants_issued_total", provider="ldap") == 1
    assert kt.metric("keyturn_grants", state="active") == 1
    kt.post("alice", f"/v1/grants/{grant['id']}/release")
    assert kt.metric("keyturn_revocations_succeeded_total", provider="ldap") == 1
    assert kt.metric("keyturn_grants", state="revoked") == 1
    assert kt.metric("keyturn_grants", state="active") == 0


def test_metrics_observe_the_revocation_lag_of_an_expiry(kt: Keyturn) -> None:
    """/metrics after an expiry: one revocation lag observation for ldap."""
    grant = kt.request("alice", duration="PT1S")
    try:
        kt.run_worker_until("expiry", lambda: kt.grant(grant["id"])["status"] == "revoked")
    except AssertionError as exc:  # say where the grant stopped, for a CI log
        raise AssertionError(f"{exc}; the grant is now {kt.grant(grant['id'])}") from None
    assert kt.metric("keyturn_revocation_lag_seconds_count", provider="ldap") == 1
    assert kt.metric("keyturn_revocations_succeeded_total", provider="ldap") == 1
