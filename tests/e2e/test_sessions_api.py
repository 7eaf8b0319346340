"""``GET /v1/sessions``, ``/v1/sessions/{id}`` and ``/v1/sessions/{id}/recording`` over the real
app (SQLite store, real recordings in ``gateway.recordings_dir``), and ``/v1/audit/verify``
naming a session whose recording was changed or deleted."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from keyturn.domain.sessions import SessionKind
from tests.e2e.conftest import Api
from tests.e2e.recorded import recording_of, seed

SESSION_FIELDS = {
    "id",
    "grant_id",
    "request_id",
    "user_id",
    "role",
    "target",
    "kind",
    "command",
    "client",
    "status",
    "started_at",
    "ended_at",
    "end_reason",
    "exit_status",
    "recording",
    "recording_sha256",
    "recording_bytes",
}


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def listed(api: Api, user: str, **params: Any) -> list[str]:
    """The ids ``user`` gets from ``GET /v1/sessions``."""
    return [s["id"] for s in ok(api.get(user, "/v1/sessions", params=params))["items"]]


def test_admin_lists_every_session_newest_first(api: Api) -> None:
    """The admin (sam) sees alice's and bob's sessions, the newest first."""
    first = seed(api.app, user="alice")
    second = seed(api.app, user="bob", target="db-2")
    third = seed(api.app, user="alice", end=False)
    assert listed(api, "sam") == [third.id, second.id, first.id]


def test_session_json_has_every_field(api: Api) -> None:
    """An ended session lists with its end, exit status and the chained recording hash."""
    session = seed(api.app, kind=SessionKind.EXEC, command="uptime")
    [item] = ok(api.get("alice", "/v1/sessions"))["items"]
    assert set(item) == SESSION_FIELDS
    data = recording_of(api.app, session).read_bytes()
    assert item == {
        "id": session.id,
        "grant_id": session.grant_id,
        "request_id": session.request_id,
        "user_id": "alice",
        "role": "server-admin",
        "target": "db-1",
        "kind": "exec",
        "command": "uptime",
        "client": "127.0.0.1:50022",
        "status": "ended",
        "started_at": item["started_at"],
        "ended_at": item["ended_at"],
        "end_reason": "closed",
        "exit_status": 0,
        "recording": f"{session.id}.cast",
        "recording_sha256": hashlib.sha256(data).hexdigest(),
        "recording_bytes": len(data),
    }
    assert item["started_at"].endswith("Z")
    assert item["ended_at"].endswith("Z")


def test_live_session_has_no_end_yet(api: Api) -> None:
    """A live session: no end time, reason, exit status or hash."""
    seed(api.app, end=False)
    [item] = ok(api.get("alice", "/v1/sessions"))["items"]
    assert item["status"] == "live"
    assert [item[k] for k in ("ended_at", "end_reason", "exit_status", "recording_sha256")] == [
        None,
        None,
        None,
        None,
    ]


def test_owner_lists_only_their_own_sessions(api: Api) -> None:
    """alice sees hers, not bob's; asking for bob's gives nothing."""
    mine = seed(api.app, user="alice")
    seed(api.app, user="bob")
    assert listed(api, "alice") == [mine.id]
    assert listed(api, "alice", user_id="bob") == []
    assert listed(api, "alice", user_id="alice") == [mine.id]


def test_other_user_sees_an_empty_list(api: Api) -> None:
    """carol has no session: she sees none of alice's, even when she names alice."""
    seed(api.app, user="alice")
    assert listed(api, "carol") == []
    assert listed(api, "carol", user_id="alice") == []


def test_filters_by_grant_and_user_and_limit(api: Api) -> None:
    """``grant_id`` and ``user_id`` narrow the list; ``limit`` keeps the newest."""
    a1 = seed(api.app, user="alice", grant_id="grt_00000000000000000001")
    a2 = seed(api.app, user="alice", grant_id="grt_00000000000000000001")
    b1 = seed(api.app, user="bob", grant_id="grt_00000000000000000002")
    assert listed(api, "sam", grant_id="grt_00000000000000000001") == [a2.id, a1.id]
    assert listed(api, "sam", user_id="bob") == [b1.id]
    assert listed(api, "sam", limit=2) == [b1.id, a2.id]
    assert listed(api, "alice", grant_id="grt_00000000000000000002") == []


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": "many"},
        {"grant_id": "grt_x; DROP TABLE sessions"},
        {"user_id": "../alice"},
        {"user_id": "a" * 70},
    ],
)
def test_bad_list_parameters_are_refused_as_invalid_input(api: Api, params: dict[str, Any]) -> None:
    """Out-of-range or malformed filters get a 400 problem naming the parameter."""
    seed(api.app)
    response = api.get("sam", "/v1/sessions", params=params)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert next(iter(params)) in response.json()["detail"]


def test_show_gives_the_session_and_its_best_effort_command_log(api: Api) -> None:
    """The owner and the admin get the record plus each command line marked best_effort."""
    session = seed(api.app, commands=["ls -la", "systemctl restart postgresql"])
    for user in ("alice", "sam"):
        data = ok(api.get(user, f"/v1/sessions/{session.id}"))
        assert set(data) == SESSION_FIELDS | {"commands"}
        assert data["id"] == session.id
        assert data["commands"] == [
            {"command": "ls -la", "best_effort": True},
            {"command": "systemctl restart postgresql", "best_effort": True},
        ]


def test_command_log_holds_only_this_sessions_lines(api: Api) -> None:
    """Lines of another session of the same user are not mixed in."""
    first = seed(api.app, commands=["whoami"])
    seed(api.app, commands=["reboot"])
    assert ok(api.get("alice", f"/v1/sessions/{first.id}"))["commands"] == [
        {"command": "whoami", "best_effort": True}
    ]


def test_recording_is_the_stored_file_byte_for_byte(api: Api) -> None:
    """Owner and admin download the .cast exactly as stored, as application/x-asciicast."""
    session = seed(api.app)
    stored = recording_of(api.app, session).read_bytes()
    for user in ("alice", "sam"):
        response = api.get(user, f"/v1/sessions/{session.id}/recording")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/x-asciicast"
        assert response.headers["content-length"] == str(len(stored))
        assert response.headers["cache-control"] == "no-store"
        assert response.content == stored


def test_live_sessions_recording_is_served_as_far_as_written(api: Api) -> None:
    """A live session's recording is served up to what the file holds now."""
    session = seed(api.app, [(0.1, "o", "still running")], end=False)
    response = api.get("alice", f"/v1/sessions/{session.id}/recording")
    assert response.status_code == 200
    assert response.content == recording_of(api.app, session).read_bytes()
    assert b"still running" in response.content


@pytest.mark.parametrize("suffix", ["", "/recording"])
def test_someone_elses_session_is_not_found(api: Api, suffix: str) -> None:
    """bob gets the same 404 for alice's session as for one that does not exist."""
    session = seed(api.app, user="alice")
    theirs = api.get("bob", f"/v1/sessions/{session.id}{suffix}")
    missing_id = "ses_" + "0" * 20
    missing = api.get("bob", f"/v1/sessions/{missing_id}{suffix}")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["title"] == missing.json()["title"]
    assert theirs.json()["detail"] == missing.json()["detail"].replace(missing_id, session.id)
    assert b"root@db-1" not in theirs.content


def test_deleted_recording_is_not_found_and_says_so(api: Api) -> None:
    """The record exists but its file is gone: 404 saying the recording is missing."""
    session = seed(api.app)
    recording_of(api.app, session).unlink()
    response = api.get("alice", f"/v1/sessions/{session.id}/recording")
    assert response.status_code == 404
    assert "missing" in response.json()["detail"]


@pytest.mark.parametrize(
    "bad_id",
    ["ses_XYZ", "SES_0123", "ses_", "grt_0123456789abcdef0123", "ses_" + "a" * 65, "ses_1 OR 1"],
)
@pytest.mark.parametrize("suffix", ["", "/recording"])
def test_malformed_session_id_is_refused_and_changes_nothing(
    api: Api, bad_id: str, suffix: str
) -> None:
    """A path that is not a session id gets a 400 problem naming ``session_id``; no record,
    recording or audit event changes."""
    session = seed(api.app)
    before = (api.snapshot(), listed(api, "sam"), recording_of(api.app, session).read_bytes())
    response = api.get("alice", f"/v1/sessions/{bad_id}{suffix}")
    assert response.status_code == 400, response.text
    assert response.json()["type"].endswith("/invalid-input")
    assert "session_id" in response.json()["detail"]
    after = (api.snapshot(), listed(api, "sam"), recording_of(api.app, session).read_bytes())
    assert after == before


@pytest.mark.parametrize(
    "path",
    [
        "/v1/sessions/..%2F..%2Fkeyturn.db/recording",
        "/v1/sessions/%2e%2e/recording",
        "/v1/sessions/ses_0123%2F..%2F..%2Fkeyturn.db/recording",
    ],
)
def test_path_traversal_reaches_no_file(api: Api, path: str) -> None:
    """Encoded ``..`` and ``/`` in the id never serve a file from outside the recordings."""
    seed(api.app)
    response = api.get("sam", path)
    assert response.status_code in (400, 404), response.text
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "path", ["/v1/sessions", "/v1/sessions/ses_0123", "/v1/sessions/ses_0123/recording"]
)
def test_sessions_need_a_token(api: Api, path: str) -> None:
    """No bearer token, no session data."""
    assert api.get(None, path).status_code == 401


# --- recordings in audit verify ----------------------------------------------------------------
def verify(api: Api) -> dict[str, Any]:
    result: dict[str, Any] = ok(api.get("sam", "/v1/audit/verify"))
    return result


def ended_seq(api: Api, session_id: str) -> int:
    """The sequence number of the session's ``session.ended`` event."""
    with api.app.deps.store.transaction() as tx:
        [event] = [
            e
            for e in tx.iter_audit()
            if e.action == "session.ended" and e.subject.get("session_id") == session_id
        ]
    return event.seq


def test_audit_verify_names_the_session_whose_recording_changed(api: Api) -> None:
    """One flipped byte in a recording makes the verification fail at its session.ended event,
    naming the session."""
    seed(api.app, user="bob")
    session = seed(api.app)
    assert verify(api)["ok"] is True
    path = recording_of(api.app, session)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = verify(api)
    assert result["ok"] is False
    assert result["first_bad_seq"] == ended_seq(api, session.id)
    assert session.id in result["reason"]
    assert "changed" in result["reason"]


def test_audit_verify_names_the_session_whose_recording_was_deleted(api: Api) -> None:
    """A deleted recording fails the verification naming its session."""
    session = seed(api.app)
    recording_of(api.app, session).unlink()
    result = verify(api)
    assert result["ok"] is False
    assert result["first_bad_seq"] == ended_seq(api, session.id)
    assert session.id in result["reason"]
    assert "missing" in result["reason"]


def test_audit_verify_notices_a_recording_cut_short(api: Api) -> None:
    """Truncating the last event away (a valid file, still) fails the verification."""
    session = seed(api.app)
    path = recording_of(api.app, session)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))
    result = verify(api)
    assert result["ok"] is False
    assert session.id in result["reason"]
