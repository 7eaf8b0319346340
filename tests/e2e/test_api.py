"""End-to-end behaviour of the HTTP API over the real app (SQLite store, SSH CA provider).

Every refused call must answer with RFC 9457 problem details and leave the state untouched: the
number of requests, grants and audit events is compared before and after.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    SSHCertificateType,
    load_ssh_public_identity,
)

from tests.conftest import TOKENS
from tests.e2e.conftest import Api

PROBLEM_KEYS = {"type", "title", "status", "detail"}
CERT_PREFIX = "ssh-ed25519-cert-v01@openssh.com "


def ask(
    api: Api,
    user: str,
    key: str | None,
    *,
    role: str = "server-admin",
    target: str = "db-1",
    duration: str = "PT30M",
    justification: str = "disk full on db-1, need to rotate logs",
    **extra: Any,
) -> httpx.Response:
    """POST /v1/requests as ``user`` (the key is left out when None)."""
    body: dict[str, Any] = {
        "role": role,
        "target": target,
        "duration": duration,
        "justification": justification,
        **extra,
    }
    if key is not None:
        body["ssh_public_key"] = key
    return api.post(user, "/v1/requests", json=body)


def created(response: httpx.Response) -> dict[str, Any]:
    """The body of a 201 answer (fails the test otherwise)."""
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def ok(response: httpx.Response) -> dict[str, Any]:
    """The body of a 200 answer (fails the test otherwise)."""
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    """The answer is an RFC 9457 problem with this status and type; returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == status
    assert body["type"] == f"https://keyturn.dev/problems/{slug}"
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert isinstance(body["title"], str)
    return body


def pending_bob(api: Api, pubkey: str) -> dict[str, Any]:
    """Bob's high-tier request, waiting for a dba-lead."""
    data = created(ask(api, "bob", pubkey, role="db-schema-admin", duration="PT1H"))
    assert data["status"] == "pending"
    return data


def rsa_2048_line() -> str:
    """A valid OpenSSH RSA public key line of 2048 bits (below the 3072-bit floor)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


# --- happy paths ------------------------------------------------------------------------------


def test_auto_approved_request_issues_a_certificate_signed_by_the_ca(api: Api, pubkey: str) -> None:
    """A standard-tier request is auto-approved and yields a CA-signed, 30-minute certificate."""
    data = created(ask(api, "alice", pubkey))
    assert data["status"] == "approved"
    assert data["requester"] == "alice"
    assert data["duration"] == "PT30M"
    assert data["decision"]["outcome"] == "auto_approve"
    assert data["decision"]["rule"] == "standard-auto-approve"
    grant = data["grant"]
    assert grant["status"] == "active"
    assert grant["user"] == "alice"
    assert grant["request_id"] == data["id"]
    cert_line = grant["credentials"]["ssh_certificate"]
    assert cert_line.startswith(CERT_PREFIX)

    cert = load_ssh_public_identity(cert_line.encode())
    assert isinstance(cert, SSHCertificate)
    cert.verify_cert_signature()
    assert cert.type is SSHCertificateType.USER
    assert cert.valid_principals == [b"server-admin@db-1"]
    assert cert.serial == grant["serial"]
    assert cert.valid_before - cert.valid_after == 30 * 60 + 30  # window + 30 s clock skew
    ca_line = api.get("alice", "/v1/ssh/ca").text.split()
    signer = cert.signature_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert signer.decode() == f"{ca_line[0]} {ca_line[1]}"
    certified = cert.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert certified.decode().split() == pubkey.split()[:2]


def test_high_tier_request_waits_for_a_lead_then_is_granted(api: Api, pubkey: str) -> None:
    """Bob's high-tier request is pending with no grant until carol (a dba-lead) approves it."""
    data = pending_bob(api, pubkey)
    assert data["decision"]["outcome"] == "require_approval"
    assert data["decision"]["rule"] == "high-tier-needs-lead"
    assert data["grant"] is None
    assert api.grant_count() == 0

    approved = ok(api.post("carol", f"/v1/requests/{data['id']}/approve", json={"comment": "ok"}))
    assert approved["status"] == "approved"
    assert [(r["reviewer"], r["verdict"]) for r in approved["reviews"]] == [("carol", "approve")]
    assert approved["grant"]["status"] == "active"
    assert approved["grant"]["user"] == "bob"
    assert approved["grant"]["credentials"] == {}  # carol's answer never carries bob's cert

    again = ok(api.get("bob", f"/v1/requests/{data['id']}"))
    assert again["status"] == "approved"
    assert again["grant"]["credentials"]["ssh_certificate"].startswith(CERT_PREFIX)


def test_only_the_owner_sees_the_certificate(api: Api, pubkey: str) -> None:
    """Bob sees his certificate; carol (the approver) and sam (admin) see the grant without it."""
    data = pending_bob(api, pubkey)
    ok(api.post("carol", f"/v1/requests/{data['id']}/approve"))

    mine = ok(api.get("bob", f"/v1/requests/{data['id']}"))
    assert mine["grant"]["credentials"]["ssh_certificate"].startswith(CERT_PREFIX)
    for viewer in ("carol", "sam"):
        theirs = ok(api.get(viewer, f"/v1/requests/{data['id']}"))
        assert theirs["grant"]["id"] == mine["grant"]["id"]
        assert theirs["grant"]["credentials"] == {}
    admin_list = ok(api.get("sam", "/v1/grants"))["items"]
    assert [g["credentials"] for g in admin_list] == [{}]
    assert ok(api.get("carol", "/v1/grants"))["items"] == []
    assert ok(api.get("bob", "/v1/grants"))["items"][0]["credentials"]["ssh_certificate"]


def test_owner_release_revokes_and_lists_the_serial_in_the_krl(
    api: Api, pubkey: str, tmp_path: Path
) -> None:
    """Releasing one's own grant ends it (released) and the served KRL revokes the certificate."""
    grant = created(ask(api, "alice", pubkey))["grant"]
    cert_file = tmp_path / "id-cert.pub"
    cert_file.write_text(grant["credentials"]["ssh_certificate"] + "\n")
    krl_file = tmp_path / "served.krl"

    krl_file.write_bytes(api.get("alice", "/v1/ssh/krl").content)
    before = subprocess.run(
        ["ssh-keygen", "-Q", "-f", str(krl_file), str(cert_file)], capture_output=True, check=False
    )
    assert before.returncode == 0, before.stdout

    ended = ok(api.post("alice", f"/v1/grants/{grant['id']}/release"))
    assert ended["status"] == "revoked"
    assert ended["end_reason"] == "released"
    assert ended["ended_by"] == "alice"
    assert ended["credentials"] == {}

    krl_file.write_bytes(api.get("alice", "/v1/ssh/krl").content)
    after = subprocess.run(
        ["ssh-keygen", "-Q", "-f", str(krl_file), str(cert_file)], capture_output=True, check=False
    )
    assert after.returncode != 0
    assert b"REVOKED" in after.stdout
    listed = ok(api.get("alice", "/v1/grants"))["items"]
    assert [(g["id"], g["status"]) for g in listed] == [(grant["id"], "revoked")]


def test_admin_revokes_someone_elses_grant(api: Api, pubkey: str) -> None:
    """Sam (group security) revokes alice's active grant; it is revoked by sam."""
    grant = created(ask(api, "alice", pubkey))["grant"]
    ended = ok(api.post("sam", f"/v1/grants/{grant['id']}/revoke"))
    assert ended["status"] == "revoked"
    assert ended["end_reason"] == "revoked"
    assert ended["ended_by"] == "sam"
    assert ok(api.get("sam", "/v1/grants", params={"status": "active"}))["items"] == []


def test_ssh_ca_and_krl_are_served(api: Api) -> None:
    """GET /v1/ssh/ca is one ssh-ed25519 line; GET /v1/ssh/krl is a binary OpenSSH KRL."""
    ca = api.get("bob", "/v1/ssh/ca")
    assert ca.status_code == 200
    assert ca.text.startswith("ssh-ed25519 ")
    assert ca.text.count("\n") == 1
    krl = api.get("bob", "/v1/ssh/krl")
    assert krl.status_code == 200
    assert krl.headers["content-type"] == "application/octet-stream"
    assert krl.content.startswith(b"SSHKRL\n\x00")


def test_health_readiness_and_openapi_need_no_token(api: Api) -> None:
    """/healthz, /readyz and /openapi.json answer 200 without a token; readiness checks pass."""
    assert ok(api.get(None, "/healthz")) == {"status": "ok"}
    ready = ok(api.get(None, "/readyz"))
    assert ready["status"] == "ready"
    assert ready["checks"] == {"store": "ok", "ssh": "ok"}
    assert ready["details"]["oncall"]["database"]["state"] == "ok"
    spec = ok(api.get(None, "/openapi.json"))
    assert "/v1/requests" in spec["paths"]
    assert "/v1/grants/{grant_id}/revoke" in spec["paths"]


def test_whoami_names_the_token_owner(api: Api) -> None:
    """Each token resolves to its own user; only sam is an admin."""
    for user in ("alice", "sam"):
        me = ok(api.get(user, "/v1/whoami"))
        assert me["id"] == user
        assert me["admin"] is (user == "sam")


def test_audit_trail_records_the_story_and_verifies(api: Api, pubkey: str) -> None:
    """Requests, decisions and grants are audited, and the hash chain verifies."""
    alice_req = created(ask(api, "alice", pubkey))
    bob_req = pending_bob(api, pubkey)
    ok(api.post("carol", f"/v1/requests/{bob_req['id']}/approve"))

    events = ok(api.get("sam", "/v1/audit", params={"limit": 10_000}))["items"]
    actions = [e["action"] for e in events]
    for action in ("request.created", "request.decided", "grant.issued", "request.reviewed"):
        assert action in actions
    issued = {e["subject"]["request_id"] for e in events if e["action"] == "grant.issued"}
    assert issued == {alice_req["id"], bob_req["id"]}
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(a["hash"] == b["prev_hash"] for a, b in itertools.pairwise(events))

    verify = ok(api.get("alice", "/v1/audit/verify"))
    assert verify["ok"] is True
    assert verify["events"] == len(events)
    assert verify["first_bad_seq"] is None
    assert verify["head_hash"] == events[-1]["hash"]


def test_non_admin_reads_only_their_own_audit_events(api: Api, pubkey: str) -> None:
    """Alice's audit view holds only events about or by her; bob's activity is not in it."""
    created(ask(api, "alice", pubkey))
    pending_bob(api, pubkey)
    events = ok(api.get("alice", "/v1/audit", params={"limit": 10_000}))["items"]
    assert events
    assert all(e["actor"] == "alice" or e["subject"].get("user_id") == "alice" for e in events)


# --- hostile input: duration ------------------------------------------------------------------


@pytest.mark.parametrize("duration", ["PT0S", "-PT5M", "30 minutes", "P1M", "P1Y", "PT0.5S", ""])
def test_bad_duration_is_refused(api: Api, pubkey: str, duration: str) -> None:
    """Zero, negative, prose, calendar-unit, fractional and empty durations: 400, nothing kept."""
    before = api.snapshot()
    body = assert_problem(ask(api, "alice", pubkey, duration=duration), 400, "invalid-input")
    assert "duration" in body["detail"]
    assert api.snapshot() == before


def test_duration_above_role_maximum_is_refused_not_clamped(api: Api, pubkey: str) -> None:
    """PT5H for server-admin (max PT4H) is 400 naming the maximum; no request is created."""
    before = api.snapshot()
    body = assert_problem(ask(api, "alice", pubkey, duration="PT5H"), 400, "invalid-input")
    assert "maximum" in body["detail"]
    assert "4h" in body["detail"]
    assert body.get("field") == "duration"
    assert api.snapshot() == before
    at_max = created(ask(api, "alice", pubkey, duration="PT4H"))
    assert at_max["duration"] == "PT4H"
    assert at_max["status"] == "approved"


# --- hostile input: role, target, justification, body ---------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("role", "root-everywhere"), ("target", "db-9"), ("role", "Server-Admin")],
)
def test_unknown_role_or_target_is_refused(api: Api, pubkey: str, field: str, value: str) -> None:
    """An unknown role or target is 400 naming it; nothing is written."""
    before = api.snapshot()
    body = assert_problem(ask(api, "alice", pubkey, **{field: value}), 400, "invalid-input")
    assert value in body["detail"]
    assert api.snapshot() == before


@pytest.mark.parametrize("justification", ["", "   ", "\n\t ", "x" * 1001])
def test_blank_or_overlong_justification_is_refused(
    api: Api, pubkey: str, justification: str
) -> None:
    """Empty, whitespace-only and 1001-character justifications are 400; nothing is written."""
    before = api.snapshot()
    body = assert_problem(
        ask(api, "alice", pubkey, justification=justification), 400, "invalid-input"
    )
    assert "justification" in body["detail"]
    assert api.snapshot() == before


def test_justification_at_the_limit_is_accepted(api: Api, pubkey: str) -> None:
    """Exactly 1000 characters is allowed (the limit is inclusive)."""
    data = created(ask(api, "alice", pubkey, justification="y" * 1000))
    assert data["justification"] == "y" * 1000


def test_control_characters_in_justification_are_stored_escaped(api: Api, pubkey: str) -> None:
    """Newlines, ESC and a forged log line are accepted but stored as visible escapes."""
    hostile = "fix db\n2026-01-01 INFO grant.issued user=mallory\x1b[2K\rdone"
    data = created(ask(api, "alice", pubkey, justification=hostile))
    stored = data["justification"]
    assert stored == "fix db\\n2026-01-01 INFO grant.issued user=mallory\\x1b[2K\\rdone"
    for raw in ("\n", "\r", "\x1b"):
        assert raw not in stored
    assert ok(api.get("alice", f"/v1/requests/{data['id']}"))["justification"] == stored
    events = ok(api.get("sam", "/v1/audit", params={"limit": 10_000}))["items"]
    audited = [e for e in events if e["action"] == "request.created"]
    assert [e["details"]["justification"] for e in audited] == [stored]


@pytest.mark.parametrize(
    "body",
    [
        {"admin": True},
        {"requester": "sam"},
        {"status": "approved"},
    ],
    ids=["admin", "requester", "status"],
)
def test_unknown_json_field_is_refused(api: Api, pubkey: str, body: dict[str, Any]) -> None:
    """Extra fields (e.g. trying to set the requester or status) are 400; nothing is written."""
    before = api.snapshot()
    problem = assert_problem(ask(api, "alice", pubkey, **body), 400, "invalid-input")
    assert next(iter(body)) in problem["detail"]
    assert api.snapshot() == before


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[]", b"null", b'{"role": "server-admin"}'],
    ids=["garbage", "array", "null", "missing-fields"],
)
def test_malformed_body_is_refused(api: Api, payload: bytes) -> None:
    """Non-object or incomplete JSON bodies are 400 problem details, never 422 or 500."""
    before = api.snapshot()
    response = api.post(
        "alice", "/v1/requests", content=payload, headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 400, "invalid-input")
    assert api.snapshot() == before


# --- hostile input: SSH keys ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "needle"),
    [
        ("ssh-ed25519 not-base64!!! x", "not a valid"),
        ("hello", "not a valid"),
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP1/U4EddRIpUt9KnC7s5Of2EbdSPO9EAMMeP4C2USZp x", "DSA"),
        ("RSA2048", "3072"),
    ],
    ids=["garbage-blob", "not-a-key", "dsa", "rsa-2048"],
)
def test_unacceptable_ssh_key_is_refused(api: Api, key: str, needle: str) -> None:
    """Malformed, DSA and short RSA keys are 400 on ssh_public_key; nothing is written."""
    if key == "RSA2048":
        key = rsa_2048_line()
    before = api.snapshot()
    body = assert_problem(ask(api, "alice", key), 400, "invalid-input")
    assert needle in body["detail"]
    assert body.get("field") == "ssh_public_key"
    assert api.snapshot() == before


def test_two_key_lines_are_refused(api: Api, pubkey: str) -> None:
    """Two public key lines in one field are 400 (exactly one key is certified)."""
    before = api.snapshot()
    two = pubkey.strip() + "\n" + pubkey.strip()
    assert_problem(ask(api, "alice", two), 400, "invalid-input")
    assert api.snapshot() == before


def test_certificate_instead_of_public_key_is_refused(api: Api, pubkey: str) -> None:
    """Sending a certificate (from an earlier grant) as the key is 400; nothing is written."""
    cert = created(ask(api, "alice", pubkey))["grant"]["credentials"]["ssh_certificate"]
    before = api.snapshot()
    body = assert_problem(ask(api, "alice", cert), 400, "invalid-input")
    assert "certificate" in body["detail"]
    assert api.snapshot() == before


@pytest.mark.parametrize("key", [None, "", "   "], ids=["absent", "empty", "blank"])
def test_missing_ssh_key_for_ssh_role_is_refused(api: Api, key: str | None) -> None:
    """An SSH role without a public key is 400 naming ssh_public_key; nothing is written."""
    before = api.snapshot()
    body = assert_problem(ask(api, "alice", key), 400, "invalid-input")
    assert "ssh_public_key" in body["detail"]
    assert api.snapshot() == before


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-known-token"},
        {"Authorization": f"Basic {TOKENS['alice']}"},
        {"Authorization": "Bearer "},
        {"Authorization": TOKENS["alice"]},
    ],
    ids=["none", "unknown-token", "basic-scheme", "empty-bearer", "no-scheme"],
)
def test_unauthenticated_calls_are_refused(api: Api, pubkey: str, headers: dict[str, str]) -> None:
    """Missing, unknown or wrongly-schemed credentials are 401 with WWW-Authenticate."""
    before = api.snapshot()
    body = {
        "role": "server-admin",
        "target": "db-1",
        "duration": "PT30M",
        "justification": "x",
        "ssh_public_key": pubkey,
    }
    response = api.client.post("/v1/requests", json=body, headers=headers)
    assert_problem(response, 401, "unauthenticated")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_problem(api.client.get("/v1/requests", headers=headers), 401, "unauthenticated")
    assert api.snapshot() == before


# --- reviews ----------------------------------------------------------------------------------


def request_state(api: Api, request_id: str) -> tuple[str, list[tuple[str, str]], Any]:
    """(status, reviews, grant) of a request as the admin sees it."""
    data = ok(api.get("sam", f"/v1/requests/{request_id}"))
    reviews = [(r["reviewer"], r["verdict"]) for r in data["reviews"]]
    return data["status"], reviews, data["grant"]


@pytest.mark.parametrize("reviewer", ["alice", "mallory", "sam"])
def test_non_approver_cannot_approve(api: Api, pubkey: str, reviewer: str) -> None:
    """Someone outside dba-leads (even an admin) gets 403; the request stays pending."""
    req = pending_bob(api, pubkey)
    before = api.snapshot()
    assert_problem(api.post(reviewer, f"/v1/requests/{req['id']}/approve"), 403, "forbidden")
    assert request_state(api, req["id"]) == ("pending", [], None)
    assert api.snapshot() == before


@pytest.mark.parametrize("verdict", ["approve", "deny"])
def test_requester_cannot_review_own_request(api: Api, pubkey: str, verdict: str) -> None:
    """Bob approving or denying his own request is 403; nothing changes."""
    req = pending_bob(api, pubkey)
    before = api.snapshot()
    body = assert_problem(api.post("bob", f"/v1/requests/{req['id']}/{verdict}"), 403, "forbidden")
    assert "own" in body["detail"]
    assert request_state(api, req["id"]) == ("pending", [], None)
    assert api.snapshot() == before


def test_lead_who_is_also_requester_cannot_self_approve(api: Api, pubkey: str) -> None:
    """Dave is both in dba and dba-leads: he may request but not approve his own request."""
    req = created(ask(api, "dave", pubkey, role="db-schema-admin", duration="PT1H"))
    assert req["status"] == "pending"
    before = api.snapshot()
    assert_problem(api.post("dave", f"/v1/requests/{req['id']}/approve"), 403, "forbidden")
    assert request_state(api, req["id"]) == ("pending", [], None)
    assert api.snapshot() == before
    assert ok(api.post("carol", f"/v1/requests/{req['id']}/approve"))["status"] == "approved"


def test_approving_twice_is_a_conflict(api: Api, pubkey: str) -> None:
    """Carol's second approval is 409; still one review and one grant."""
    req = pending_bob(api, pubkey)
    ok(api.post("carol", f"/v1/requests/{req['id']}/approve"))
    before = api.snapshot()
    state = request_state(api, req["id"])
    assert_problem(api.post("carol", f"/v1/requests/{req['id']}/approve"), 409, "conflict")
    assert request_state(api, req["id"]) == state
    assert api.snapshot() == before
    assert before[1] == 1


def test_approving_a_denied_request_is_a_conflict(api: Api, pubkey: str) -> None:
    """After dave denies, carol's approval is 409 and no grant appears."""
    req = pending_bob(api, pubkey)
    denied = ok(api.post("dave", f"/v1/requests/{req['id']}/deny", json={"comment": "no"}))
    assert denied["status"] == "denied"
    assert denied["grant"] is None
    before = api.snapshot()
    assert_problem(api.post("carol", f"/v1/requests/{req['id']}/approve"), 409, "conflict")
    assert request_state(api, req["id"]) == ("denied", [("dave", "deny")], None)
    assert api.snapshot() == before
    assert before[1] == 0


def test_approving_a_cancelled_request_is_a_conflict(api: Api, pubkey: str) -> None:
    """After bob cancels, carol's approval is 409 and no grant appears."""
    req = pending_bob(api, pubkey)
    cancelled = ok(api.post("bob", f"/v1/requests/{req['id']}/cancel"))
    assert cancelled["status"] == "cancelled"
    before = api.snapshot()
    assert_problem(api.post("carol", f"/v1/requests/{req['id']}/approve"), 409, "conflict")
    assert request_state(api, req["id"]) == ("cancelled", [], None)
    assert api.snapshot() == before


def test_cancelling_someone_elses_request_is_forbidden(api: Api, pubkey: str) -> None:
    """Alice cannot cancel bob's request (403); it stays pending."""
    req = pending_bob(api, pubkey)
    before = api.snapshot()
    assert_problem(api.post("alice", f"/v1/requests/{req['id']}/cancel"), 403, "forbidden")
    assert request_state(api, req["id"]) == ("pending", [], None)
    assert api.snapshot() == before


def test_cancelling_an_approved_request_is_a_conflict(api: Api, pubkey: str) -> None:
    """An approved request cannot be cancelled (409); its grant stays active."""
    req = pending_bob(api, pubkey)
    ok(api.post("carol", f"/v1/requests/{req['id']}/approve"))
    before = api.snapshot()
    assert_problem(api.post("bob", f"/v1/requests/{req['id']}/cancel"), 409, "conflict")
    status, _, grant = request_state(api, req["id"])
    assert (status, grant["status"]) == ("approved", "active")
    assert api.snapshot() == before


def test_overlong_review_comment_is_refused(api: Api, pubkey: str) -> None:
    """A 1001-character comment is 400 and records no review."""
    req = pending_bob(api, pubkey)
    before = api.snapshot()
    response = api.post("carol", f"/v1/requests/{req['id']}/approve", json={"comment": "c" * 1001})
    assert_problem(response, 400, "invalid-input")
    assert request_state(api, req["id"]) == ("pending", [], None)
    assert api.snapshot() == before


# --- grants -----------------------------------------------------------------------------------


def test_releasing_someone_elses_grant_is_forbidden(api: Api, pubkey: str) -> None:
    """Alice releasing bob's grant is 403; the grant stays active."""
    req = pending_bob(api, pubkey)
    grant = ok(api.post("carol", f"/v1/requests/{req['id']}/approve"))["grant"]
    before = api.snapshot()
    assert_problem(api.post("alice", f"/v1/grants/{grant['id']}/release"), 403, "forbidden")
    assert request_state(api, req["id"])[2]["status"] == "active"
    assert api.snapshot() == before


def test_ending_an_already_revoked_grant_is_a_conflict(api: Api, pubkey: str) -> None:
    """Releasing or revoking a revoked grant is 409; its end reason is unchanged."""
    grant = created(ask(api, "alice", pubkey))["grant"]
    ok(api.post("alice", f"/v1/grants/{grant['id']}/release"))
    before = api.snapshot()
    assert_problem(api.post("alice", f"/v1/grants/{grant['id']}/release"), 409, "conflict")
    assert_problem(api.post("sam", f"/v1/grants/{grant['id']}/revoke"), 409, "conflict")
    [listed] = ok(api.get("alice", "/v1/grants"))["items"]
    assert (listed["status"], listed["end_reason"], listed["ended_by"]) == (
        "revoked",
        "released",
        "alice",
    )
    assert api.snapshot() == before


@pytest.mark.parametrize("actor", ["alice", "carol"])
def test_non_admin_cannot_revoke(api: Api, pubkey: str, actor: str) -> None:
    """Revoke is admin-only, even for the grant's owner; the grant stays active."""
    grant = created(ask(api, "alice", pubkey))["grant"]
    before = api.snapshot()
    assert_problem(api.post(actor, f"/v1/grants/{grant['id']}/revoke"), 403, "forbidden")
    assert ok(api.get("sam", "/v1/grants"))["items"][0]["status"] == "active"
    assert api.snapshot() == before


# --- not found, denied ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "method", "path"),
    [
        ("alice", "GET", "/v1/requests/req_doesnotexist"),
        ("carol", "POST", "/v1/requests/req_doesnotexist/approve"),
        ("carol", "POST", "/v1/requests/req_doesnotexist/deny"),
        ("alice", "POST", "/v1/requests/req_doesnotexist/cancel"),
        ("alice", "POST", "/v1/grants/grt_doesnotexist/release"),
        ("sam", "POST", "/v1/grants/grt_doesnotexist/revoke"),
        ("alice", "GET", "/v1/no-such-route"),
    ],
)
def test_unknown_ids_are_not_found(api: Api, user: str, method: str, path: str) -> None:
    """Unknown request and grant ids (and routes) are 404 problem details; nothing changes."""
    before = api.snapshot()
    assert_problem(api.call(user, method, path), 404, "not-found")
    assert api.snapshot() == before


def test_someone_elses_request_is_not_found_for_outsiders(api: Api, pubkey: str) -> None:
    """Alice cannot read bob's request: 404, as if it did not exist."""
    req = pending_bob(api, pubkey)
    assert_problem(api.get("alice", f"/v1/requests/{req['id']}"), 404, "not-found")
    assert ok(api.get("alice", "/v1/requests"))["items"] == []


def test_ineligible_user_is_denied_by_policy(api: Api, pubkey: str) -> None:
    """Mallory (contractors) is not eligible: 201 with status denied by 'eligibility', no grant."""
    data = created(ask(api, "mallory", pubkey))
    assert data["status"] == "denied"
    assert data["decision"]["outcome"] == "deny"
    assert data["decision"]["rule"] == "eligibility"
    assert data["grant"] is None
    assert api.grant_count() == 0
    assert ok(api.get("mallory", f"/v1/requests/{data['id']}"))["status"] == "denied"


def test_eligible_user_on_a_role_outside_their_groups_is_denied(api: Api, pubkey: str) -> None:
    """Alice (sre) asking for db-schema-admin is denied by eligibility, with no grant."""
    data = created(ask(api, "alice", pubkey, role="db-schema-admin", duration="PT1H"))
    assert (data["status"], data["decision"]["rule"], data["grant"]) == (
        "denied",
        "eligibility",
        None,
    )


# --- the worker -------------------------------------------------------------------------------


def test_worker_expires_a_short_grant(live_server: str, pubkey: str) -> None:
    """A PT2S grant is ended by the real worker: revoked with end_reason expired within 10 s."""
    alice = {"Authorization": f"Bearer {TOKENS['alice']}"}
    sam = {"Authorization": f"Bearer {TOKENS['sam']}"}
    with httpx.Client(base_url=live_server, timeout=10) as client:
        response = client.post(
            "/v1/requests",
            headers=alice,
            json={
                "role": "server-admin",
                "target": "db-1",
                "duration": "PT2S",
                "justification": "quick look",
                "ssh_public_key": pubkey,
            },
        )
        assert response.status_code == 201, response.text
        grant_id = response.json()["grant"]["id"]
        assert response.json()["grant"]["status"] == "active"

        deadline = time.monotonic() + 10
        seen: dict[str, Any] = {}
        while time.monotonic() < deadline:
            items = client.get("/v1/grants", headers=sam).json()["items"]
            seen = next(g for g in items if g["id"] == grant_id)
            if seen["status"] == "revoked":
                break
            time.sleep(0.1)
        assert seen["status"] == "revoked", seen
        assert seen["end_reason"] == "expired"
        assert seen["ended_by"] == "system:worker"
        events = client.get("/v1/audit", headers=sam, params={"limit": 10_000}).json()["items"]
        assert any(
            e["action"] == "grant.expired" and e["subject"]["grant_id"] == grant_id for e in events
        )
        assert client.get("/v1/audit/verify", headers=sam).json()["ok"] is True
