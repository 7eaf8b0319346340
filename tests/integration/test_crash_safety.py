"""Crash safety: ``keyturn serve`` is SIGKILLed at each step of grant and revoke, then restarted.

The fault hook (``KEYTURN_FAULT_BLOCK_AT``, :class:`keyturn.testing.BlockingProvider`) makes every
provider block forever at one step and say so on stderr. Each test has alice hold two grants at
once, one per provider -- membership of ``db-admins`` in a real slapd (``ldap``) and an SSH
certificate (``ssh``) -- drives both into the step, checks the write-ahead rows the store holds
at that moment, kills the process with SIGKILL and starts a fresh ``keyturn serve`` on the same
store without the fault. (One crash interrupting both providers halves the server starts that
dominate the run time.) Within a deadline the restarted server must bring the store and the
real systems back into agreement:

* LDAP: every ``active`` grant's user is in its group; nobody is in a managed group without an
  active grant (the allowlisted svc-backup excepted);
* SSH: every ``active`` grant's certificate is signed by the CA for its window and its serial is
  not on the KRL; every grant ended early whose window is still open has its serial on the KRL,
  and nothing else is on it;
* no grant is left ``provisioning`` / ``revoking`` / ``revoke_failed``;
* the audit chain verifies, every event written before the kill is still there unchanged, and
  each grant's events are exactly the write-ahead ones plus the completing one (nothing lost, no
  duplicate ``grant.issued`` / ``grant.released`` / ``grant.expired``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    load_ssh_public_identity,
    load_ssh_public_key,
)

from keyturn.bootstrap import FAULT_ENV
from keyturn.config import normalize_dn
from keyturn.lab import Slapd, free_port, make_user_key
from tests.conftest import LDAP_PASSWORD_ENV, TOKENS, example_data

pytestmark = pytest.mark.integration

KEYTURN = str(Path(sys.executable).parent / "keyturn")
PEOPLE = "ou=people,dc=example,dc=org"
DB_ADMINS = "cn=db-admins,ou=groups,dc=example,dc=org"
APP_DEPLOYERS = "cn=app-deployers,ou=groups,dc=example,dc=org"
MANAGED_GROUPS = (DB_ADMINS, APP_DEPLOYERS)
ALLOWED = frozenset({normalize_dn(f"uid=svc-backup,{PEOPLE}")})
UNFINISHED = frozenset({"provisioning", "revoking", "revoke_failed"})
ENDED_EARLY = frozenset({"released", "revoked"})
PROVIDERS = ("ldap", "ssh")
ROLES = {"ldap": ("db-admins", "corp-directory"), "ssh": ("server-admin", "db-1")}
"""provider -> (role, target) that alice requests."""
START_TIMEOUT = 20.0  # seconds for `keyturn serve` to answer /healthz
BLOCK_TIMEOUT = 10.0  # seconds for a provider call to reach the fault step
SETTLE_TIMEOUT = 15.0  # seconds for the restarted server to finish what the crash interrupted


def user_dn(user_id: str) -> str:
    """The normalised directory DN of a Keyturn user (``directory_login`` = the id here)."""
    return normalize_dn(f"uid={user_id},{PEOPLE}")


def parse_time(value: str) -> datetime:
    """An API time (RFC 3339, ``Z``) as an aware datetime."""
    return datetime.fromisoformat(value)


class Background:
    """Run one blocking HTTP call in a thread; keep its response or the exception it raised."""

    def __init__(self, call: Callable[[], httpx.Response]) -> None:
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], httpx.Response]) -> None:
        try:
            self.response = call()
        except BaseException as exc:  # kept for the test to assert on; never left unhandled
            self.error = exc

    def join_dropped(self) -> None:
        """Wait for the call to end; the server was killed, so it got no answer."""
        self._thread.join(10.0)
        assert not self._thread.is_alive(), "the blocked HTTP call did not end after the kill"
        assert self.response is None, f"the blocked call was answered: {self.response.text}"
        assert isinstance(self.error, httpx.TransportError), repr(self.error)


class Deployment:
    """One Keyturn installation in ``tmp_path`` (config, SQLite store, CA, KRL; directory =
    the real slapd) and the ``keyturn serve`` process currently running on it."""

    def __init__(self, tmp_path: Path, slapd: Slapd, **server: str) -> None:
        self.tmp_path = tmp_path
        self.slapd = slapd
        self.port = free_port()
        data = example_data(tmp_path, ldap_url=slapd.url)
        data["server"].update(
            port=self.port,
            worker_max_sleep="PT0.1S",
            stale_after="PT1S",
            retry_initial="PT0.2S",
            retry_max="PT1S",
        )
        data["server"].update(server)
        self.config = tmp_path / "keyturn.yaml"
        self.config.write_text(yaml.safe_dump(data))
        self.ca_pub = Path(data["ssh_ca"]["key_path"] + ".pub")
        self.krl = Path(data["ssh_ca"]["key_path"]).with_name("revoked.krl")
        self.pubkey = make_user_key(tmp_path / "alice" / "id_ed25519", "alice").read_text()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.stderr_path = tmp_path / "serve-0.stderr"

    # process ---------------------------------------------------------------------------------
    def start(self, fault: str | None) -> None:
        """Start ``keyturn serve`` (its providers blocking at ``fault``); wait for /healthz."""
        assert self.proc is None
        self.runs += 1
        env = dict(os.environ)
        env.pop(FAULT_ENV, None)
        if fault is not None:
            env[FAULT_ENV] = fault
        env[LDAP_PASSWORD_ENV] = self.slapd.service_password
        self.stderr_path = self.tmp_path / f"serve-{self.runs}.stderr"
        with (
            self.stderr_path.open("wb") as stderr,
            (self.tmp_path / f"serve-{self.runs}.stdout").open("wb") as stdout,
        ):
            self.proc = subprocess.Popen(
                [KEYTURN, "serve", "--config", str(self.config)],
                stdout=stdout,
                stderr=stderr,
                env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(base_url=self.base_url, timeout=2.0) as http:
            while time.monotonic() < deadline:
                self._assert_running()
                try:
                    if http.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        pytest.fail(f"keyturn serve did not answer within {START_TIMEOUT}s:\n{self.stderr()}")

    def _assert_running(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"keyturn serve exited ({self.proc.returncode}):\n{self.stderr()}")

    def stderr(self) -> str:
        """The tail of what the current (or last) serve process wrote to stderr."""
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def wait_blocked(self, step: str, count: int) -> None:
        """Wait until the fault hook has reported ``count`` provider calls blocked at ``step``."""
        line = f"keyturn-fault: blocked at {step}"
        deadline = time.monotonic() + BLOCK_TIMEOUT
        while time.monotonic() < deadline:
            self._assert_running()
            if self.stderr_path.read_text(errors="replace").count(line) >= count:
                return
            time.sleep(0.02)
        pytest.fail(f"not {count} x {line!r} within {BLOCK_TIMEOUT}s:\n{self.stderr()}")

    def kill(self) -> None:
        """SIGKILL the serve process: no shutdown code runs."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        assert self.proc.returncode == -signal.SIGKILL
        self.proc = None

    def close(self) -> None:
        """Stop whatever serve process is still running (teardown)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    # API -------------------------------------------------------------------------------------
    def call(self, user: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call as ``user``."""
        headers = {"Authorization": f"Bearer {TOKENS[user]}"}
        with httpx.Client(base_url=self.base_url, timeout=10.0) as http:
            return http.request(method, path, headers=headers, **kwargs)

    def request_body(self, provider: str, duration: str) -> dict[str, Any]:
        """Alice's request of the role that ``provider`` grants."""
        role, target = ROLES[provider]
        body: dict[str, Any] = {
            "role": role,
            "target": target,
            "duration": duration,
            "justification": "crash-safety test: INC-4242",
        }
        if provider == "ssh":
            body["ssh_public_key"] = self.pubkey
        return body

    def block_in_background(
        self, step: str, calls: dict[str, Callable[[], httpx.Response]]
    ) -> dict[str, Background]:
        """Send each call from its own thread, one after the other, each once the previous one
        is blocked at ``step``; returns the pending calls by provider."""
        pending = {}
        for blocked, (provider, call) in enumerate(calls.items(), start=1):
            pending[provider] = Background(call)
            self.wait_blocked(step, blocked)
        return pending

    def request_blocked(self, step: str, duration: str) -> dict[str, Background]:
        """Alice requests both roles; each request blocks in its provider at ``step``."""
        return self.block_in_background(
            step,
            {
                p: lambda p=p: self.call(
                    "alice", "POST", "/v1/requests", json=self.request_body(p, duration)
                )
                for p in PROVIDERS
            },
        )

    def request_active(self, *, ldap: str, ssh: str) -> dict[str, dict[str, Any]]:
        """Alice requests both roles (ldap first) for these durations, auto-approved and
        granted; returns the active grants by provider."""
        granted = {}
        for provider, duration in (("ldap", ldap), ("ssh", ssh)):
            response = self.call(
                "alice", "POST", "/v1/requests", json=self.request_body(provider, duration)
            )
            assert response.status_code == 201, response.text
            grant = response.json()["grant"]
            assert grant["status"] == "active", grant
            granted[provider] = dict(grant)
        return granted

    def grants(self, user: str = "sam") -> list[dict[str, Any]]:
        """Every grant (sam, an admin), or the user's own ones (with their credentials)."""
        params: dict[str, Any] = {"limit": 1000}
        if user != "sam":
            params["mine"] = True
        response = self.call(user, "GET", "/v1/grants", params=params)
        assert response.status_code == 200, response.text
        return list(response.json()["items"])

    def by_provider(self) -> dict[str, dict[str, Any]]:
        """Alice's grants (at most one per provider), as sam sees them."""
        return {g["provider"]: g for g in self.grants()}

    def wait_statuses(self, expected: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Poll until the grants by provider have exactly these statuses; return them. (A call
        blocked at a step has committed its write-ahead row just before; this also covers the
        moment between that commit and the fault line.)"""
        deadline = time.monotonic() + BLOCK_TIMEOUT
        while True:
            grants = self.by_provider()
            statuses = {p: g["status"] for p, g in grants.items()}
            if statuses == expected or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert statuses == expected, (grants, self.stderr())
        return grants

    def audit(self) -> list[dict[str, Any]]:
        """The whole audit trail, oldest first."""
        response = self.call("sam", "GET", "/v1/audit", params={"limit": 10_000})
        assert response.status_code == 200, response.text
        return list(response.json()["items"])

    # the real systems ------------------------------------------------------------------------
    def alice_in_db_admins(self) -> bool:
        """Is alice's DN in db-admins, read from slapd?"""
        return user_dn("alice") in self.members(DB_ADMINS)

    def members(self, group: str) -> set[str]:
        """The group's members in slapd, normalised."""
        return {normalize_dn(m) for m in self.slapd.members(group)}

    def krl_serials(self) -> set[int]:
        """Serials listed in the KRL file, read back with ``ssh-keygen -Q -l``."""
        listing = subprocess.run(
            ["ssh-keygen", "-Q", "-l", "-f", str(self.krl)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        return {
            int(line.split(":", 1)[1])
            for line in listing.splitlines()
            if line.startswith("serial:")
        }

    def problems(self) -> list[str]:
        """Every way the store and the real systems disagree now (empty: consistent)."""
        grants = self.grants()
        found = [
            f"grant {g['id']} ({g['provider']}) is still {g['status']}"
            for g in grants
            if g["status"] in UNFINISHED
        ]
        return found + self._ldap_problems(grants) + self._ssh_problems(grants)

    def _ldap_problems(self, grants: list[dict[str, Any]]) -> list[str]:
        found = []
        for group in MANAGED_GROUPS:
            privilege = normalize_dn(group)
            members = self.members(group)
            holders = {
                user_dn(g["user"])
                for g in grants
                if (g["provider"], g["privilege"], g["status"]) == ("ldap", privilege, "active")
            }
            found += [f"{dn}: active grant but not in {group}" for dn in sorted(holders - members)]
            found += [
                f"{dn}: in {group} without an active grant"
                for dn in sorted(members - holders - ALLOWED)
            ]
        return found

    def _ssh_problems(self, grants: list[dict[str, Any]]) -> list[str]:
        now = datetime.now(UTC)
        on_krl = self.krl_serials()
        ssh = [g for g in grants if g["provider"] == "ssh"]
        credentials = {
            g["id"]: g["credentials"] for u in {g["user"] for g in ssh} for g in self.grants(u)
        }
        found = []
        must_list = set()
        for g in ssh:
            if g["status"] == "active":
                if not self._certificate_ok(credentials[g["id"]].get("ssh_certificate"), g):
                    found.append(f"grant {g['id']} is active without a valid certificate")
                if g["serial"] in on_krl:
                    found.append(f"grant {g['id']} is active but its serial is on the KRL")
            elif g["end_reason"] in ENDED_EARLY and parse_time(g["not_after"]) > now:
                must_list.add(g["serial"])
                if g["serial"] not in on_krl:
                    found.append(f"grant {g['id']} ended early but its serial is not on the KRL")
        found += [f"serial {s} is on the KRL without an early end" for s in on_krl - must_list]
        return found

    def _certificate_ok(self, text: str | None, grant: dict[str, Any]) -> bool:
        """Signed by the CA, for this grant's serial and window, and not expired."""
        if not text:
            return False
        cert = load_ssh_public_identity(text.encode())
        assert isinstance(cert, SSHCertificate)
        cert.verify_cert_signature()
        ca = load_ssh_public_key(self.ca_pub.read_bytes())
        return (
            cert.signature_key() == ca
            and cert.serial == grant["serial"]
            and cert.valid_before == int(parse_time(grant["not_after"]).timestamp())
            and cert.valid_before > time.time()
        )

    def settle(self, expected: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Poll until each provider's grant reached its expected status and the store and the
        real systems agree; returns the grants by provider."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            grants = self.by_provider()
            statuses = {p: g["status"] for p, g in grants.items()}
            problems = self.problems()
            if (statuses == expected and not problems) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert statuses == expected, (grants, problems, self.stderr())
        assert problems == [], (grants, self.stderr())
        return grants


@pytest.fixture
def deployment(tmp_path: Path, slapd: Slapd) -> Iterator[Deployment]:
    """A Keyturn deployment on the real slapd (both providers configured); its server is
    stopped at teardown whatever happened."""
    deploy = Deployment(tmp_path, slapd)
    try:
        yield deploy
    finally:
        deploy.close()


def events_of(events: list[dict[str, Any]], grant_id: str) -> list[str]:
    """The actions of the grant's audit events, in order."""
    return [e["action"] for e in events if e["subject"].get("grant_id") == grant_id]


def check_audit(deploy: Deployment, before_kill: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chain verifies, and every event recorded before the kill is still there unchanged."""
    verify = deploy.call("sam", "GET", "/v1/audit/verify")
    assert verify.status_code == 200, verify.text
    assert verify.json()["ok"] is True, verify.json()
    after = deploy.audit()
    assert after[: len(before_kill)] == before_kill
    assert [e["seq"] for e in after] == list(range(1, len(after) + 1))
    return after


def no_reconcile_findings(deploy: Deployment) -> None:
    """Keyturn's own reconciliation (dry run) sees no drift between grants and directory."""
    dry = deploy.call("sam", "POST", "/v1/reconcile", json={"dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json()["findings"] == []
    assert dry.json()["errors"] == []


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("step", ["grant", "verify_granted"])
def test_kill_while_granting_resumes_to_active(deployment: Deployment, step: str) -> None:
    """Killed before the provider adds (``grant``) or after it added but before the read-back
    (``verify_granted``): the ``provisioning`` rows survive and the restart makes them
    ``active`` with the privilege in place (membership; a valid certificate), issued once."""
    deploy = deployment
    deploy.start(fault=step)
    pending = deploy.request_blocked(step, "PT10M")
    grants = deploy.wait_statuses({"ldap": "provisioning", "ssh": "provisioning"})
    # grant: nothing added yet; verify_granted: added, not yet read back
    assert deploy.alice_in_db_admins() is (step == "verify_granted")
    before_kill = deploy.audit()
    for grant in grants.values():
        assert events_of(before_kill, grant["id"]) == ["grant.provisioning"]

    deploy.kill()
    for call in pending.values():
        call.join_dropped()

    deploy.start(fault=None)
    deploy.settle({"ldap": "active", "ssh": "active"})
    assert deploy.alice_in_db_admins()
    assert deploy.krl_serials() == set()
    no_reconcile_findings(deploy)
    after = check_audit(deploy, before_kill)
    for provider, grant in grants.items():
        assert events_of(after, grant["id"]) == ["grant.provisioning", "grant.issued"]
        [issued] = [
            e
            for e in after
            if e["action"] == "grant.issued" and e["subject"]["grant_id"] == grant["id"]
        ]
        # the membership the killed process added is found in place, not added twice
        assert issued["details"]["already_present"] is (
            provider == "ldap" and step == "verify_granted"
        )


@pytest.mark.parametrize("step", ["revoke", "verify_revoked"])
def test_kill_while_releasing_resumes_to_revoked(deployment: Deployment, step: str) -> None:
    """Killed during a release, before the provider removes (``revoke``) or after it removed
    but before the read-back (``verify_revoked``): the ``revoking`` rows survive and the restart
    ends them ``revoked`` with the privilege gone (membership removed; serial on the KRL)."""
    deploy = deployment
    deploy.start(fault=step)  # the grant path never reaches a revoke step
    grants = deploy.request_active(ldap="PT10M", ssh="PT10M")
    assert deploy.alice_in_db_admins()
    pending = deploy.block_in_background(
        step,
        {
            p: lambda g=g: deploy.call("alice", "POST", f"/v1/grants/{g['id']}/release")
            for p, g in grants.items()
        },
    )
    revoking = deploy.wait_statuses({"ldap": "revoking", "ssh": "revoking"})
    assert {g["end_reason"] for g in revoking.values()} == {"released"}
    # revoke: still a member; verify_revoked: already removed, and the KRL already written
    assert deploy.alice_in_db_admins() is (step == "revoke")
    if step == "verify_revoked":
        assert grants["ssh"]["serial"] in deploy.krl_serials()
    before_kill = deploy.audit()
    for grant in grants.values():
        assert events_of(before_kill, grant["id"]) == [
            "grant.provisioning",
            "grant.issued",
            "grant.revoking",
        ]

    deploy.kill()
    for call in pending.values():
        call.join_dropped()

    deploy.start(fault=None)
    final = deploy.settle({"ldap": "revoked", "ssh": "revoked"})
    for grant in final.values():
        assert (grant["end_reason"], grant["ended_by"]) == ("released", "alice")
    assert not deploy.alice_in_db_admins()
    assert deploy.krl_serials() == {grants["ssh"]["serial"]}
    no_reconcile_findings(deploy)
    after = check_audit(deploy, before_kill)
    for grant in grants.values():
        assert events_of(after, grant["id"]) == [
            "grant.provisioning",
            "grant.issued",
            "grant.revoking",
            "grant.released",
        ]


def test_kill_while_the_worker_expires_grants(deployment: Deployment) -> None:
    """The worker (not the API) reaches the ``revoke`` step for the LDAP grant whose window
    closed, and is killed there, with the SSH grant (due a moment later) overdue behind it: the
    restart ends the ``revoking`` row and expires the overdue one, both ``revoked`` (expired),
    membership gone, nothing on the KRL (a certificate's own end is its revocation)."""
    deploy = deployment
    deploy.start(fault="revoke")
    grants = deploy.request_active(ldap="PT2S", ssh="PT2S")
    deploy.wait_blocked("revoke", 1)
    ldap, ssh = deploy.by_provider()["ldap"], deploy.by_provider()["ssh"]
    assert (ldap["status"], ldap["end_reason"]) == ("revoking", "expired")
    assert ldap["ended_by"] == "system:worker"
    assert ssh["status"] in {"active", "revoking"}  # see the held-up-worker test below
    assert deploy.alice_in_db_admins()
    before_kill = deploy.audit()
    ends = ["grant.provisioning", "grant.issued", "grant.revoking", "grant.expired"]
    assert events_of(before_kill, ldap["id"]) == ends[:3]

    deploy.kill()
    deploy.start(fault=None)
    final = deploy.settle({"ldap": "revoked", "ssh": "revoked"})
    assert {(g["end_reason"], g["ended_by"]) for g in final.values()} == {
        ("expired", "system:worker")
    }
    assert not deploy.alice_in_db_admins()
    assert deploy.krl_serials() == set()
    no_reconcile_findings(deploy)
    after = check_audit(deploy, before_kill)
    for grant in grants.values():
        assert events_of(after, grant["id"]) == ends


def test_a_hanging_revocation_does_not_hold_up_later_expiries(deployment: Deployment) -> None:
    """The worker is stuck in the LDAP grant's revoke (the provider call hangs). The SSH grant,
    due a second later, must still be claimed and ended on time ("a slow provider call holds up
    only its own grant"): its row must reach ``revoking`` within a second of its end."""
    deploy = deployment
    deploy.start(fault="revoke")
    grants = deploy.request_active(ldap="PT2S", ssh="PT3S")
    deploy.wait_blocked("revoke", 1)
    assert deploy.by_provider()["ldap"]["status"] == "revoking"
    due = parse_time(grants["ssh"]["not_after"]).timestamp()
    time.sleep(max(0.0, due + 1.0 - time.time()))
    ssh = deploy.by_provider()["ssh"]
    assert (ssh["status"], ssh["end_reason"]) == ("revoking", "expired"), ssh


def test_window_closing_during_the_outage_takes_back_a_half_made_grant(
    tmp_path: Path, slapd: Slapd
) -> None:
    """Killed after slapd added alice (``verify_granted``); the short window closes before the
    restarted worker finds the row stale (``stale_after`` is longer than the window here, so its
    first pass -- which also reconciles -- still sees a live ``provisioning`` grant). Resumed
    after the window, the grant ends ``failed``, and the membership the killed process made
    must go with it at once, not at the next ``reconcile_interval`` (5 minutes)."""
    deploy = Deployment(tmp_path, slapd, stale_after="PT4S")
    try:
        deploy.start(fault="verify_granted")
        body = deploy.request_body("ldap", "PT2S")
        pending = Background(lambda: deploy.call("alice", "POST", "/v1/requests", json=body))
        deploy.wait_blocked("verify_granted", 1)
        [grant] = deploy.grants()
        assert grant["status"] == "provisioning"
        assert deploy.alice_in_db_admins()
        deploy.kill()
        pending.join_dropped()

        deploy.start(fault=None)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while (final := deploy.grants()[0])["status"] == "provisioning":
            assert time.monotonic() < deadline, deploy.stderr()
            time.sleep(0.1)
        assert final["status"] == "failed", final
        assert "window closed" in (final["last_error"] or "")
        grace = time.monotonic() + 2.0
        while deploy.alice_in_db_admins() and time.monotonic() < grace:
            time.sleep(0.1)
        assert deploy.problems() == []
        after = check_audit(deploy, [])
        assert events_of(after, grant["id"]) == ["grant.provisioning", "grant.failed"]
        [failed] = [e for e in after if e["action"] == "grant.failed"]
        assert failed["details"]["cleanup"] == "removed"  # taken back by the resume itself
    finally:
        deploy.close()
