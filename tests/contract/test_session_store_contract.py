"""The gateway-session part of the Store contract: sessions behave alike in InMemoryStore,
SqlStore on SQLite and SqlStore on PostgreSQL (``store`` fixture, as in
``test_store_contract.py``)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from keyturn.domain.errors import Conflict, NotFound
from keyturn.domain.sessions import COMMAND_MAX, EndReason, Session, SessionKind, SessionStatus
from keyturn.ports import Store

T0 = datetime(2026, 11, 17, 2, 45, 0, 123456, tzinfo=UTC)


def a_session(n: int, **changes: object) -> Session:
    """Session ``ses_NNNN`` of alice's grant 1 on db-1, started ``n`` minutes after T0."""
    session = Session(
        id=f"ses_{n:04d}",
        grant_id="grt_0001",
        request_id="req_0001",
        user_id="alice",
        role="server-admin",
        target="db-1",
        kind=SessionKind.SHELL,
        started_at=T0 + timedelta(minutes=n),
        recording=f"ses_{n:04d}.cast",
        client="127.0.0.1:50022",
    )
    return dataclasses.replace(session, **changes)  # type: ignore[arg-type]


def ended(session: Session, *, minutes: int = 5, **changes: object) -> Session:
    """``session`` ended ``minutes`` after it started, closed with exit 0 and a chained hash."""
    fields: dict[str, object] = {
        "status": SessionStatus.ENDED,
        "ended_at": session.started_at + timedelta(minutes=minutes, microseconds=7),
        "end_reason": EndReason.CLOSED,
        "exit_status": 0,
        "recording_sha256": "ab" * 32,
        "recording_bytes": 5_000_000_000,  # past 32 bits
    }
    return dataclasses.replace(session, **(fields | changes))  # type: ignore[arg-type]


def add(store: Store, *sessions: Session) -> None:
    with store.transaction() as tx:
        for session in sessions:
            tx.add_session(session)


class _Boom(Exception):
    """Raised inside a transaction to make it roll back."""


def add_then_fail(store: Store, session: Session) -> None:
    """Add ``session``, then fail before the transaction commits."""
    with store.transaction() as tx:
        tx.add_session(session)
        raise _Boom("the gateway failed before relaying")


def ids(rows: list[Session]) -> list[str]:
    return [s.id for s in rows]


class TestSessionStoreContract:
    """Behaviour every Store must show for gateway sessions."""

    @pytest.mark.parametrize(
        "session",
        [
            a_session(1),
            a_session(2, kind=SessionKind.EXEC, command="echo 'x'; \x1b]0;t\x07 é"),
            a_session(3, kind=SessionKind.EXEC, command="y" * COMMAND_MAX),
            a_session(4, kind=SessionKind.SFTP, command="sftp", client=""),
        ],
        ids=["shell", "exec with odd characters", "longest command", "sftp"],
    )
    def test_added_session_reads_back_equal(self, store: Store, session: Session) -> None:
        """Every field comes back as written, times aware UTC to the microsecond."""
        add(store, session)
        with store.transaction() as tx:
            got = tx.get_session(session.id)
        assert got == session
        assert got.started_at.tzinfo is not None
        assert got.started_at.utcoffset() == timedelta(0)

    def test_saved_session_keeps_its_end(self, store: Store) -> None:
        """save_session persists status, end time and reason, exit status and the hash."""
        session = a_session(1)
        add(store, session)
        done = ended(session, end_reason=EndReason.GRANT_ENDED, exit_status=None)
        with store.transaction() as tx:
            tx.save_session(done)
        with store.transaction() as tx:
            got = tx.get_session(session.id)
        assert got == done
        assert got.ended_at == session.started_at + timedelta(minutes=5, microseconds=7)
        assert got.recording_bytes == 5_000_000_000

    @pytest.mark.parametrize("reason", list(EndReason))
    def test_every_end_reason_round_trips(self, store: Store, reason: EndReason) -> None:
        """Each end reason is stored and read back as itself."""
        session = a_session(1)
        add(store, session)
        with store.transaction() as tx:
            tx.save_session(ended(session, end_reason=reason))
        with store.transaction() as tx:
            assert tx.get_session(session.id).end_reason is reason

    def test_unknown_session_raises_not_found(self, store: Store) -> None:
        """Reading or saving a session that does not exist raises NotFound (nothing created)."""
        with store.transaction() as tx:
            with pytest.raises(NotFound):
                tx.get_session("ses_missing")
            with pytest.raises(NotFound):
                tx.save_session(a_session(9))
        with store.transaction() as tx:
            assert tx.list_sessions() == []

    def test_duplicate_id_conflicts_and_keeps_the_first(self, store: Store) -> None:
        """Adding a session whose id exists raises Conflict; the stored one is unchanged and
        the transaction can go on."""
        first = a_session(1)
        add(store, first)
        with store.transaction() as tx:
            with pytest.raises(Conflict):
                tx.add_session(a_session(1, user_id="mallory", target="db-2"))
            tx.add_session(a_session(2))
        with store.transaction() as tx:
            assert tx.get_session(first.id) == first
            assert ids(tx.list_sessions()) == ["ses_0002", "ses_0001"]

    def test_list_is_newest_first_and_limited(self, store: Store) -> None:
        """Sessions come newest first whatever the insert order; ``limit`` keeps the newest."""
        add(store, *(a_session(n) for n in (3, 1, 5, 2, 4)))
        with store.transaction() as tx:
            assert ids(tx.list_sessions()) == [f"ses_{n:04d}" for n in (5, 4, 3, 2, 1)]
            assert ids(tx.list_sessions(limit=2)) == ["ses_0005", "ses_0004"]

    def test_sessions_started_together_are_ordered_by_id(self, store: Store) -> None:
        """Equal start times (channels opened at once) list in id order, the same everywhere."""
        same = T0 + timedelta(minutes=1)
        add(store, *(a_session(n, started_at=same) for n in (2, 3, 1)))
        with store.transaction() as tx:
            assert ids(tx.list_sessions()) == ["ses_0001", "ses_0002", "ses_0003"]

    def test_list_filters_by_grant_user_and_status_and_combines_them(self, store: Store) -> None:
        """Each filter narrows the list; given together, all must hold."""
        add(
            store,
            a_session(1),
            a_session(2, grant_id="grt_0002", request_id="req_0002"),
            a_session(3, user_id="bob", grant_id="grt_0003", request_id="req_0003"),
            a_session(4),
        )
        with store.transaction() as tx:
            tx.save_session(ended(tx.get_session("ses_0001")))
            tx.save_session(ended(tx.get_session("ses_0003")))
        with store.transaction() as tx:
            assert ids(tx.list_sessions(grant_id="grt_0001")) == ["ses_0004", "ses_0001"]
            assert ids(tx.list_sessions(user_id="alice")) == ["ses_0004", "ses_0002", "ses_0001"]
            assert ids(tx.list_sessions(user_id="bob")) == ["ses_0003"]
            assert ids(tx.list_sessions(status=SessionStatus.LIVE)) == ["ses_0004", "ses_0002"]
            assert ids(tx.list_sessions(status=SessionStatus.ENDED)) == ["ses_0003", "ses_0001"]
            assert ids(
                tx.list_sessions(grant_id="grt_0001", user_id="alice", status=SessionStatus.LIVE)
            ) == ["ses_0004"]
            assert tx.list_sessions(grant_id="grt_0002", user_id="bob") == []
            assert tx.list_sessions(user_id="nobody") == []

    def test_rolled_back_session_is_not_stored(self, store: Store) -> None:
        """A session added in a transaction that fails is gone."""
        with pytest.raises(_Boom):
            add_then_fail(store, a_session(1))
        with store.transaction() as tx, pytest.raises(NotFound):
            tx.get_session("ses_0001")
