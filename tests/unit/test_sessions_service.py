"""The gateway's rules, with fakes: which certificate opens which session; crash recovery."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyturn.adapters.providers.ssh_ca import gateway_key_id, key_id
from keyturn.adapters.recording import RecordingWriter
from keyturn.domain.errors import Forbidden
from keyturn.domain.model import EndReason as GrantEnd
from keyturn.domain.model import Grant, GrantStatus
from keyturn.domain.sessions import EndReason, SessionKind, SessionStatus
from keyturn.service import audit_log, sessions
from keyturn.service.deps import Deps
from keyturn.testing import FakeClock, FakeProvider
from tests.conftest import example_data, fake_deps

NOW = datetime(2026, 11, 21, 2, 45, tzinfo=UTC)
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.fixture
def deps(tmp_path: Path) -> Deps:
    data = example_data(tmp_path)
    data["gateway"] = {"recordings_dir": str(tmp_path / "rec")}
    for target in data["targets"]:
        if target["name"] == "db-1":
            target["host_key"] = HOST_KEY
    return fake_deps(data, FakeClock(NOW), {"ssh": FakeProvider("ssh")})


def add_grant(deps: Deps, **changes: object) -> Grant:
    grant = Grant(
        id="grt_00000000000000000001",
        request_id="req_00000000000000000001",
        user_id="alice",
        role="server-admin",
        target="db-1",
        provider="ssh",
        status=GrantStatus.ACTIVE,
        not_before=NOW - timedelta(minutes=1),
        not_after=NOW + timedelta(minutes=30),
        created_at=NOW,
        updated_at=NOW,
        serial=4711,
    )
    grant = dataclasses.replace(grant, **changes)  # type: ignore[arg-type]
    with deps.store.transaction() as tx:
        tx.add_grant(grant)
    return grant


def test_the_grants_own_certificate_opens_its_target(deps: Deps) -> None:
    grant = add_grant(deps)
    auth = sessions.authorize(deps, target_name="db-1", cert_key_id=key_id(grant), serial=4711)
    assert auth.grant.id == grant.id
    assert auth.target.name == "db-1"


@pytest.mark.parametrize(
    ("target", "key_id_of", "serial", "changes", "reason"),
    [
        ("db-2", key_id, 4711, {}, "other_target"),
        ("db-1", key_id, 4712, {}, "mismatch"),
        ("db-1", lambda g: gateway_key_id(g, "con_1"), 4711, {}, "key_id"),
        ("db-1", lambda g: "break-glass:bgr_1:alice", 4711, {}, "key_id"),
        ("db-1", key_id, 4711, {"status": GrantStatus.REVOKED}, "grant_inactive"),
        ("db-1", key_id, 4711, {"not_after": NOW}, "grant_inactive"),
        ("db-1", key_id, 4711, {"not_before": NOW + timedelta(seconds=1)}, "grant_inactive"),
        ("db-1", key_id, 4711, {"provider": "ldap"}, "mismatch"),
    ],
)
def test_anything_else_is_refused_with_its_reason(  # noqa: PLR0917 (pytest parameters)
    deps: Deps, target: str, key_id_of: object, serial: int, changes: dict[str, object], reason: str
) -> None:
    grant = add_grant(deps, **changes)
    with pytest.raises(Forbidden) as refused:
        sessions.authorize(
            deps,
            target_name=target,
            cert_key_id=key_id_of(grant),  # type: ignore[operator]
            serial=serial,
        )
    assert refused.value.details["reason"] == reason


def test_a_grant_that_does_not_exist_is_refused(deps: Deps) -> None:
    grant = dataclasses.replace(add_grant(deps), id="grt_99999999999999999999")
    with pytest.raises(Forbidden, match="does not exist"):
        sessions.authorize(deps, target_name="db-1", cert_key_id=key_id(grant), serial=4711)


def test_a_target_without_a_host_key_is_never_connected_to(deps: Deps) -> None:
    grant = add_grant(deps, target="db-2")
    with pytest.raises(Forbidden, match="host_key") as refused:
        sessions.authorize(deps, target_name="db-2", cert_key_id=key_id(grant), serial=4711)
    assert refused.value.details["reason"] == "no_host_key"


def test_grants_ended_reports_ends_and_windows_past_not_after(deps: Deps) -> None:
    live = add_grant(deps)
    revoked = add_grant(
        deps,
        id="grt_00000000000000000002",
        request_id="req_2",
        serial=2,
        status=GrantStatus.REVOKED,
        end_reason=GrantEnd.REVOKED,
    )
    late = add_grant(
        deps, id="grt_00000000000000000003", request_id="req_3", serial=3, not_after=NOW
    )
    ended = sessions.grants_ended(deps, [live.id, revoked.id, late.id, "grt_404"])
    assert ended == {revoked.id: "revoked", late.id: "expired", "grt_404": "deleted"}


def test_a_crashed_gateways_live_sessions_are_ended_with_what_was_recorded(
    deps: Deps, tmp_path: Path
) -> None:
    grant = add_grant(deps)
    auth = sessions.authorize(deps, target_name="db-1", cert_key_id=key_id(grant), serial=4711)
    session = sessions.new_session(
        deps, auth, kind=SessionKind.SHELL, command=None, client="127.0.0.1:5"
    )
    writer = RecordingWriter(tmp_path / "rec" / session.recording, "{}", lambda: 0.0)
    writer.event("o", "half a session")
    writer.close()  # the gateway dies here: the session is live and has no session.ended
    sessions.open_session(deps, session, details={})
    (ended,) = sessions.recover_interrupted(deps)
    assert ended.status is SessionStatus.ENDED
    assert ended.end_reason is EndReason.INTERRUPTED
    assert ended.recording_bytes == (tmp_path / "rec" / session.recording).stat().st_size
    assert audit_log.verify(deps).ok
    assert sessions.recover_interrupted(deps) == []
