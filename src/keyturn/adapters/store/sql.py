"""The SQL store: SQLite (WAL, the embedded default) and PostgreSQL, via SQLAlchemy 2 Core.

SQLite transactions start with ``BEGIN IMMEDIATE`` so two writers never deadlock on a lock
upgrade; PostgreSQL instances coordinate with row locks (``FOR UPDATE SKIP LOCKED`` for due
grants, ``FOR UPDATE`` on the single audit head row so the chain stays one chain).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from keyturn.adapters.store import tables as t
from keyturn.domain.alerts import AlertState
from keyturn.domain.audit import AuditDraft, AuditEvent, StoredEvent, chain, format_time
from keyturn.domain.break_glass import (
    BreakGlassMode,
    KitInfo,
    PostIncidentReview,
    ReviewStatus,
    ReviewVerdict,
    kit_from_public_data,
)
from keyturn.domain.errors import Conflict, NotFound
from keyturn.domain.model import (
    ENDED_GRANT_STATES,
    LIVE_GRANT_STATES,
    AccessRequest,
    EndReason,
    Grant,
    GrantStatus,
    RequestStatus,
    Review,
    StandingSnapshot,
    Verdict,
    decision_from_data,
    decision_to_data,
)
from keyturn.domain.sessions import EndReason as SessionEnd
from keyturn.domain.sessions import Session, SessionKind, SessionStatus
from keyturn.ports import StoredAlert

_MIGRATIONS = Path(__file__).parent / "migrations"


def create_engine(url: str) -> Engine:
    """An engine for ``url`` with Keyturn's connection settings (WAL, busy timeout, IMMEDIATE)."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            read_only = conn.get_execution_options().get("keyturn_read_only", False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class SqlStore:
    """:class:`keyturn.ports.Store` on a SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # SQLite has one writer and every transaction begins IMMEDIATE (takes the write lock).
        # Threads of this process queue on a mutex instead of meeting in SQLite's busy handler,
        # which sleeps in steps of up to 100 ms: under a burst (the worker's revocation threads,
        # the API's request threads) that sleeping, not the work, was most of the latency.
        # Other processes on the same file still wait in the busy handler (``timeout``).
        self._writer = threading.RLock() if engine.dialect.name == "sqlite" else nullcontext()

    @contextmanager
    def transaction(self) -> Iterator[SqlTx]:
        """One transaction; commits on normal exit, rolls back on exception."""
        with self._writer, self.engine.begin() as conn:
            tx = SqlTx(conn)
            yield tx
            tx.flush()

    @contextmanager
    def snapshot(self) -> Iterator[SqlTx]:
        """A read-only transaction, always rolled back (SQLite: deferred ``BEGIN``, which reads
        one snapshot in WAL mode; PostgreSQL: ``REPEATABLE READ``, so every statement of it
        sees the same snapshot -- e.g. the audit chain head and its rows)."""
        with self.engine.connect() as plain:
            options: dict[str, Any] = {"keyturn_read_only": True}
            if self.engine.dialect.name != "sqlite":
                options["isolation_level"] = "REPEATABLE READ"
            conn = plain.execution_options(**options)
            with conn.begin() as tx:
                try:
                    yield SqlTx(conn)
                finally:
                    tx.rollback()

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()


def _request_row(r: AccessRequest) -> dict[str, Any]:
    return {
        "id": r.id,
        "requester_id": r.requester_id,
        "role": r.role,
        "target": r.target,
        "duration_s": int(r.duration.total_seconds()),
        "justification": r.justification,
        "ticket": r.ticket,
        "ssh_public_key": r.ssh_public_key,
        "status": str(r.status),
        "decision": decision_to_data(r.decision),
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "start_at": r.start_at,
        "break_glass": r.break_glass,
    }


def _request(row: sa.Row[Any]) -> AccessRequest:
    m = row._mapping
    return AccessRequest(
        id=m["id"],
        requester_id=m["requester_id"],
        role=m["role"],
        target=m["target"],
        duration=timedelta(seconds=m["duration_s"]),
        justification=m["justification"],
        ticket=m["ticket"],
        ssh_public_key=m["ssh_public_key"],
        status=RequestStatus(m["status"]),
        decision=decision_from_data(m["decision"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        start_at=m["start_at"],
        break_glass=bool(m["break_glass"]),
    )


def _aware(value: datetime) -> datetime:
    """Aggregates may come back naive on some drivers; the store's times are all UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _grant_row(g: Grant) -> dict[str, Any]:
    return {
        "id": g.id,
        "request_id": g.request_id,
        "user_id": g.user_id,
        "role": g.role,
        "target": g.target,
        "provider": g.provider,
        "status": str(g.status),
        "not_before": g.not_before,
        "not_after": g.not_after,
        "serial": g.serial,
        "credentials": dict(g.credentials),
        "end_reason": str(g.end_reason) if g.end_reason else None,
        "ended_by": g.ended_by,
        "ended_at": g.ended_at,
        "attempts": g.attempts,
        "last_error": g.last_error,
        "created_at": g.created_at,
        "updated_at": g.updated_at,
        "privilege": g.privilege,
        "retry_at": g.retry_at,
        "warned_at": g.warned_at,
        "break_glass": g.break_glass,
    }


def _grant(row: sa.Row[Any]) -> Grant:
    m = dict(row._mapping)
    m["status"] = GrantStatus(m["status"])
    m["end_reason"] = EndReason(m["end_reason"]) if m["end_reason"] else None
    m["break_glass"] = bool(m["break_glass"])
    return Grant(**m)


def _kit(row: sa.Row[Any]) -> KitInfo:
    m = row._mapping
    kit = kit_from_public_data(m["data"])
    return dataclasses.replace(
        kit,
        created_at=m["created_at"],
        spent_at=m["spent_at"],
        spent_by=m["spent_by"],
        retired_at=m["retired_at"],
    )


def _pir_row(r: PostIncidentReview) -> dict[str, Any]:
    return {
        "id": r.id,
        "mode": str(r.mode),
        "user_id": r.user_id,
        "role": r.role,
        "target": r.target,
        "justification": r.justification,
        "used_at": r.used_at,
        "opened_at": r.opened_at,
        "due_at": r.due_at,
        "reviewers": list(r.reviewers),
        "grant_id": r.grant_id,
        "request_id": r.request_id,
        "record_id": r.record_id,
        "kit_id": r.kit_id,
        "status": str(r.status),
        "verdict": str(r.verdict) if r.verdict else None,
        "comment": r.comment,
        "closed_by": r.closed_by,
        "closed_at": r.closed_at,
        "overdue_alerted_at": r.overdue_alerted_at,
        "imported_by": r.imported_by,
        "findings": list(r.findings),
    }


def _pir(row: sa.Row[Any]) -> PostIncidentReview:
    m = dict(row._mapping)
    m["mode"] = BreakGlassMode(m["mode"])
    m["status"] = ReviewStatus(m["status"])
    m["verdict"] = ReviewVerdict(m["verdict"]) if m["verdict"] else None
    m["reviewers"] = tuple(m["reviewers"])
    m["findings"] = tuple(m["findings"])
    return PostIncidentReview(**m)


def _session_row(s: Session) -> dict[str, Any]:
    row = dataclasses.asdict(s)
    row["kind"] = str(s.kind)
    row["status"] = str(s.status)
    row["end_reason"] = str(s.end_reason) if s.end_reason else None
    return row


def _session(row: sa.Row[Any]) -> Session:
    m = dict(row._mapping)
    m["kind"] = SessionKind(m["kind"])
    m["status"] = SessionStatus(m["status"])
    m["end_reason"] = SessionEnd(m["end_reason"]) if m["end_reason"] else None
    return Session(**m)


def _alert(row: sa.Row[Any]) -> AlertState:
    m = row._mapping
    return AlertState(
        fingerprint=m["fingerprint"],
        source=m["source"],
        name=m["name"],
        severity=m["severity"],
        status=m["status"],
        labels=dict(m["labels"]),
        starts_at=m["starts_at"],
        ends_at=m["ends_at"],
        summary=m["summary"],
    )


def _event(row: sa.Row[Any]) -> AuditEvent:
    m = row._mapping
    return AuditEvent(
        seq=m["seq"],
        at=datetime.strptime(m["at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC),
        actor=m["actor"],
        action=m["action"],
        subject=m["subject"],
        details=m["details"],
        prev_hash=m["prev_hash"],
        hash=m["hash"],
    )


# Hot statements built once, with bound parameters: building a statement with literal values
# per call (``.values(**row)``) made SQLAlchemy derive a new cache key each time, which was
# most of the CPU of a burst of expiries (profile in docs/benchmarks.md).
_SAVE_GRANT = (
    t.grants.update()
    .where(t.grants.c.id == sa.bindparam("grant_id"))
    .values({c.name: sa.bindparam(c.name) for c in t.grants.c if c.name != "id"})
)
_APPEND_EVENT = t.audit_events.insert()
_GET_GRANT = sa.select(t.grants).where(t.grants.c.id == sa.bindparam("grant_id"))
_LOCK_GRANT = _GET_GRANT.with_for_update()


class SqlTx:
    """:class:`keyturn.ports.StoreTx` on one connection inside a transaction."""

    def __init__(self, conn: Connection) -> None:
        self._c = conn
        self._head: tuple[int, str] | None = None  # the chain head, once read in this tx
        self._pending: list[dict[str, Any]] = []  # appended events not yet written (flush)

    # access requests -------------------------------------------------------------------------
    def _insert(self, statement: sa.Insert, what: str, row: dict[str, Any] | None = None) -> None:
        """Insert in a savepoint; a unique-constraint violation becomes a Conflict. With
        ``row``, the values are bound as parameters of a statement SQLAlchemy compiles once."""
        try:
            with self._c.begin_nested():
                self._c.execute(statement, row)
        except IntegrityError as exc:
            raise Conflict(f"{what} already exists") from exc

    def _update(self, statement: sa.Update, what: str) -> None:
        if self._c.execute(statement).rowcount == 0:
            raise NotFound(f"no {what}")

    def add_request(self, request: AccessRequest) -> None:
        """Insert a new access request; raises Conflict if the id exists."""
        self._insert(
            t.access_requests.insert(), f"access request {request.id}", _request_row(request)
        )

    def get_request(self, request_id: str, *, lock: bool = False) -> AccessRequest:
        """The request; raises NotFound."""
        q = sa.select(t.access_requests).where(t.access_requests.c.id == request_id)
        row = self._c.execute(q.with_for_update() if lock else q).first()
        if row is None:
            raise NotFound(f"no access request {request_id!r}", request_id=request_id)
        return _request(row)

    def save_request(self, request: AccessRequest) -> None:
        """Update status and time of an existing request."""
        self._update(
            t.access_requests.update()
            .where(t.access_requests.c.id == request.id)
            .values(status=str(request.status), updated_at=request.updated_at),
            f"access request {request.id!r}",
        )

    def list_requests(
        self,
        *,
        status: RequestStatus | None = None,
        requester_id: str | None = None,
        limit: int = 100,
    ) -> list[AccessRequest]:
        """Newest first."""
        q = sa.select(t.access_requests)
        if status is not None:
            q = q.where(t.access_requests.c.status == str(status))
        if requester_id is not None:
            q = q.where(t.access_requests.c.requester_id == requester_id)
        q = q.order_by(t.access_requests.c.created_at.desc()).limit(limit)
        return [_request(r) for r in self._c.execute(q)]

    # reviews ---------------------------------------------------------------------------------
    def add_review(self, review: Review) -> None:
        """Insert a review; a second review by the same reviewer is a Conflict."""
        exists = self._c.execute(
            sa.select(t.reviews.c.id).where(
                t.reviews.c.request_id == review.request_id,
                t.reviews.c.reviewer_id == review.reviewer_id,
            )
        ).first()
        if exists is not None:
            raise Conflict(
                f"{review.reviewer_id} has already reviewed request {review.request_id}",
                request_id=review.request_id,
            )
        self._insert(
            t.reviews.insert().values(
                id=review.id,
                request_id=review.request_id,
                reviewer_id=review.reviewer_id,
                verdict=str(review.verdict),
                comment=review.comment,
                created_at=review.created_at,
            ),
            f"a review by {review.reviewer_id} of request {review.request_id}",
        )

    def reviews(self, request_id: str) -> list[Review]:
        """Oldest first."""
        q = (
            sa.select(t.reviews)
            .where(t.reviews.c.request_id == request_id)
            .order_by(t.reviews.c.created_at, t.reviews.c.id)
        )
        return [
            Review(
                id=m["id"],
                request_id=m["request_id"],
                reviewer_id=m["reviewer_id"],
                verdict=Verdict(m["verdict"]),
                comment=m["comment"],
                created_at=m["created_at"],
            )
            for m in (r._mapping for r in self._c.execute(q))
        ]

    # grants ----------------------------------------------------------------------------------
    def add_grant(self, grant: Grant) -> None:
        """Insert a new grant; raises Conflict if its id, request or serial exists."""
        self._insert(t.grants.insert(), f"a grant for {grant.request_id}", _grant_row(grant))

    def get_grant(self, grant_id: str, *, lock: bool = False) -> Grant:
        """The grant; raises NotFound."""
        row = self._c.execute(_LOCK_GRANT if lock else _GET_GRANT, {"grant_id": grant_id}).first()
        if row is None:
            raise NotFound(f"no grant {grant_id!r}", grant_id=grant_id)
        return _grant(row)

    def save_grant(self, grant: Grant) -> None:
        """Update an existing grant."""
        self.save_grants([grant])

    def save_grants(self, grants: Sequence[Grant]) -> None:
        """Update existing grants with one multi-row statement; raises NotFound if one is
        missing (where the driver counts rows of a multi-row update; SQLite and psycopg do)."""
        if not grants:
            return
        rows = []
        for grant in grants:
            row = _grant_row(grant)
            row["grant_id"] = row.pop("id")
            rows.append(row)
        updated = self._c.execute(_SAVE_GRANT, rows[0] if len(rows) == 1 else rows).rowcount
        sane = len(rows) == 1 or self._c.dialect.supports_sane_multi_rowcount
        if sane and updated != len(rows):
            raise NotFound(f"no grant among {', '.join(repr(g.id) for g in grants[:5])}")

    def grant_for_request(self, request_id: str) -> Grant | None:
        """The grant made from this request, if any."""
        row = self._c.execute(
            sa.select(t.grants).where(t.grants.c.request_id == request_id)
        ).first()
        return _grant(row) if row is not None else None

    def list_grants(
        self,
        *,
        status: GrantStatus | None = None,
        user_id: str | None = None,
        limit: int = 100,
    ) -> list[Grant]:
        """Newest first."""
        q = sa.select(t.grants)
        if status is not None:
            q = q.where(t.grants.c.status == str(status))
        if user_id is not None:
            q = q.where(t.grants.c.user_id == user_id)
        q = q.order_by(t.grants.c.created_at.desc(), t.grants.c.id.desc()).limit(limit)
        return [_grant(r) for r in self._c.execute(q)]

    def claim_due_grants(self, now: datetime, limit: int) -> list[Grant]:
        """Active grants past ``not_after``, locked (SKIP LOCKED) for this transaction."""
        q = (
            sa.select(t.grants)
            .where(
                t.grants.c.status == str(GrantStatus.ACTIVE),
                t.grants.c.not_after <= now,
            )
            .order_by(t.grants.c.not_after)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [_grant(r) for r in self._c.execute(q)]

    def claim_unfinished(self, now: datetime, stale_before: datetime, limit: int) -> list[Grant]:
        """Interrupted and retry-due grants, oldest update first, locked (SKIP LOCKED)."""
        g = t.grants.c
        q = (
            sa.select(t.grants)
            .where(
                sa.or_(
                    sa.and_(
                        g.status.in_([str(GrantStatus.PROVISIONING), str(GrantStatus.REVOKING)]),
                        g.updated_at <= stale_before,
                    ),
                    sa.and_(
                        g.status == str(GrantStatus.REVOKE_FAILED),
                        sa.or_(g.retry_at.is_(None), g.retry_at <= now),
                    ),
                )
            )
            .order_by(g.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [_grant(r) for r in self._c.execute(q)]

    def next_due_at(self) -> datetime | None:
        """Earliest ``not_after`` of an active grant, ``retry_at`` of a revoke_failed one, or
        ``start_at`` of a scheduled request."""
        g = t.grants.c
        r = t.access_requests.c
        due: datetime | None = self._c.execute(
            sa.select(sa.func.min(g.not_after)).where(g.status == str(GrantStatus.ACTIVE))
        ).scalar()
        retry: datetime | None = self._c.execute(
            sa.select(sa.func.min(g.retry_at)).where(g.status == str(GrantStatus.REVOKE_FAILED))
        ).scalar()
        start: datetime | None = self._c.execute(
            sa.select(sa.func.min(r.start_at)).where(r.status == str(RequestStatus.SCHEDULED))
        ).scalar()
        found = [_aware(v) for v in (due, retry, start) if v is not None]
        return min(found) if found else None

    def due_scheduled(self, now: datetime, limit: int) -> list[AccessRequest]:
        """Scheduled requests whose start has come, earliest first, locked (SKIP LOCKED)."""
        r = t.access_requests.c
        q = (
            sa.select(t.access_requests)
            .where(r.status == str(RequestStatus.SCHEDULED), r.start_at <= now)
            .order_by(r.start_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [_request(row) for row in self._c.execute(q)]

    def count_requests(self, requester_id: str, role: str, since: datetime) -> int:
        """Access requests by this requester for this role created at or after ``since``."""
        r = t.access_requests.c
        q = sa.select(sa.func.count()).where(
            r.requester_id == requester_id, r.role == role, r.created_at >= since
        )
        return int(self._c.execute(q).scalar() or 0)

    def grants_since(
        self, since: datetime, *, user_id: str | None = None, role: str | None = None
    ) -> list[Grant]:
        """Grants whose window ends after ``since`` (any state), oldest first."""
        g = t.grants.c
        q = sa.select(t.grants).where(g.not_after > since)
        if user_id is not None:
            q = q.where(g.user_id == user_id)
        if role is not None:
            q = q.where(g.role == role)
        return [_grant(row) for row in self._c.execute(q.order_by(g.not_before, g.id))]

    def claim_expiring(self, before: datetime, limit: int) -> list[Grant]:
        """Active grants ending at or before ``before`` whose holder was not warned yet, locked
        (SKIP LOCKED)."""
        g = t.grants.c
        q = (
            sa.select(t.grants)
            .where(
                g.status == str(GrantStatus.ACTIVE), g.warned_at.is_(None), g.not_after <= before
            )
            .order_by(g.not_after)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [_grant(row) for row in self._c.execute(q)]

    # break-glass -----------------------------------------------------------------------------
    def add_kit(self, kit: KitInfo) -> None:
        """Insert a break-glass kit's public description."""
        self._insert(
            t.break_glass_kits.insert().values(
                id=kit.id,
                created_at=kit.created_at,
                data=kit.public_data(),
                spent_at=kit.spent_at,
                spent_by=kit.spent_by,
                retired_at=kit.retired_at,
            ),
            f"break-glass kit {kit.id}",
        )

    def get_kit(self, kit_id: str) -> KitInfo:
        """The kit; raises NotFound."""
        row = self._c.execute(
            sa.select(t.break_glass_kits).where(t.break_glass_kits.c.id == kit_id)
        ).first()
        if row is None:
            raise NotFound(f"no break-glass kit {kit_id!r}", kit_id=kit_id)
        return _kit(row)

    def save_kit(self, kit: KitInfo) -> None:
        """Update a kit's spent/retired marks."""
        self._update(
            t.break_glass_kits.update()
            .where(t.break_glass_kits.c.id == kit.id)
            .values(spent_at=kit.spent_at, spent_by=kit.spent_by, retired_at=kit.retired_at),
            f"break-glass kit {kit.id!r}",
        )

    def kits(self) -> list[KitInfo]:
        """Every kit, newest first."""
        k = t.break_glass_kits.c
        q = sa.select(t.break_glass_kits).order_by(k.created_at.desc(), k.id)
        return [_kit(row) for row in self._c.execute(q)]

    def add_post_incident_review(self, review: PostIncidentReview) -> None:
        """Insert a review; Conflict if its id or offline record was seen before."""
        self._insert(
            t.post_incident_reviews.insert().values(**_pir_row(review)),
            f"a post-incident review of {review.record_id or review.grant_id}",
        )

    def get_post_incident_review(self, review_id: str, *, lock: bool = False) -> PostIncidentReview:
        """The review; raises NotFound."""
        q = sa.select(t.post_incident_reviews).where(t.post_incident_reviews.c.id == review_id)
        row = self._c.execute(q.with_for_update() if lock else q).first()
        if row is None:
            raise NotFound(f"no post-incident review {review_id!r}", review_id=review_id)
        return _pir(row)

    def save_post_incident_review(self, review: PostIncidentReview) -> None:
        """Update an existing review."""
        row = _pir_row(review)
        del row["id"]
        self._update(
            t.post_incident_reviews.update()
            .where(t.post_incident_reviews.c.id == review.id)
            .values(**row),
            f"post-incident review {review.id!r}",
        )

    def post_incident_reviews(
        self, *, status: ReviewStatus | None = None, limit: int = 1000
    ) -> list[PostIncidentReview]:
        """Reviews, newest first."""
        p = t.post_incident_reviews.c
        q = sa.select(t.post_incident_reviews)
        if status is not None:
            q = q.where(p.status == str(status))
        q = q.order_by(p.opened_at.desc(), p.id).limit(limit)
        return [_pir(row) for row in self._c.execute(q)]

    def review_for_record(self, record_id: str) -> PostIncidentReview | None:
        """The review opened when this offline record was imported, if it was."""
        row = self._c.execute(
            sa.select(t.post_incident_reviews).where(
                t.post_incident_reviews.c.record_id == record_id
            )
        ).first()
        return _pir(row) if row is not None else None

    def claim_overdue_reviews(self, now: datetime, limit: int) -> list[PostIncidentReview]:
        """Open reviews due at or before ``now`` not yet alerted as overdue; locked."""
        p = t.post_incident_reviews.c
        q = (
            sa.select(t.post_incident_reviews)
            .where(
                p.status == str(ReviewStatus.OPEN),
                p.due_at <= now,
                p.overdue_alerted_at.is_(None),
            )
            .order_by(p.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [_pir(row) for row in self._c.execute(q)]

    # gateway sessions --------------------------------------------------------------------------
    def add_session(self, session: Session) -> None:
        """Insert a session; Conflict if its id exists."""
        self._insert(t.sessions.insert().values(**_session_row(session)), f"session {session.id}")

    def get_session(self, session_id: str) -> Session:
        """The session; raises NotFound."""
        row = self._c.execute(sa.select(t.sessions).where(t.sessions.c.id == session_id)).first()
        if row is None:
            raise NotFound(f"no session {session_id!r}", session_id=session_id)
        return _session(row)

    def save_session(self, session: Session) -> None:
        """Update an existing session."""
        row = _session_row(session)
        del row["id"]
        self._update(
            t.sessions.update().where(t.sessions.c.id == session.id).values(**row),
            f"session {session.id!r}",
        )

    def list_sessions(
        self,
        *,
        grant_id: str | None = None,
        user_id: str | None = None,
        status: SessionStatus | None = None,
        limit: int = 100,
    ) -> list[Session]:
        """Sessions matching every filter given, newest first."""
        c = t.sessions.c
        q = sa.select(t.sessions)
        if grant_id is not None:
            q = q.where(c.grant_id == grant_id)
        if user_id is not None:
            q = q.where(c.user_id == user_id)
        if status is not None:
            q = q.where(c.status == str(status))
        q = q.order_by(c.started_at.desc(), c.id).limit(limit)
        return [_session(row) for row in self._c.execute(q)]

    # alerts ----------------------------------------------------------------------------------
    def save_alert(
        self, alert: AlertState, targets: tuple[str, ...], received_at: datetime
    ) -> None:
        """Insert or replace an alert (by fingerprint) and the targets it concerns."""
        row = {
            "source": alert.source,
            "name": alert.name,
            "severity": alert.severity,
            "status": alert.status,
            "labels": dict(alert.labels),
            "summary": alert.summary,
            "starts_at": alert.starts_at,
            "ends_at": alert.ends_at,
            "received_at": received_at,
        }
        a = t.alerts.c
        updated = self._c.execute(
            t.alerts.update().where(a.fingerprint == alert.fingerprint).values(**row)
        ).rowcount
        if not updated:
            self._c.execute(t.alerts.insert().values(fingerprint=alert.fingerprint, **row))
        self._c.execute(
            t.alert_targets.delete().where(t.alert_targets.c.fingerprint == alert.fingerprint)
        )
        if targets:
            self._c.execute(
                t.alert_targets.insert(),
                [{"fingerprint": alert.fingerprint, "target": name} for name in targets],
            )

    def alerts(
        self, *, target: str | None = None, firing_only: bool = False, limit: int = 1000
    ) -> list[StoredAlert]:
        """Alerts with the targets they concern, most recently received first. ``firing_only``
        keeps alerts whose status is firing (the caller checks ``ends_at`` against the clock)."""
        a = t.alerts.c
        q = sa.select(t.alerts)
        if target is not None:
            q = q.where(
                a.fingerprint.in_(
                    sa.select(t.alert_targets.c.fingerprint).where(
                        t.alert_targets.c.target == target
                    )
                )
            )
        if firing_only:
            q = q.where(a.status == "firing")
        rows = list(self._c.execute(q.order_by(a.received_at.desc(), a.fingerprint).limit(limit)))
        fingerprints = [row._mapping["fingerprint"] for row in rows]
        mapped: dict[str, list[str]] = {fp: [] for fp in fingerprints}
        if fingerprints:
            at = t.alert_targets.c
            for fp, name in self._c.execute(
                sa.select(at.fingerprint, at.target).where(at.fingerprint.in_(fingerprints))
            ):
                mapped[fp].append(name)
        return [
            StoredAlert(_alert(row), tuple(sorted(mapped[row._mapping["fingerprint"]])))
            for row in rows
        ]

    def grants_holding(
        self, provider: str, privilege: str, *, user_id: str | None = None
    ) -> list[Grant]:
        """Live (provisioning/active) grants of this provider's privilege, oldest first."""
        g = t.grants.c
        q = sa.select(t.grants).where(
            g.provider == provider,
            g.privilege == privilege,
            g.status.in_([str(s) for s in LIVE_GRANT_STATES]),
        )
        if user_id is not None:
            q = q.where(g.user_id == user_id)
        return [_grant(r) for r in self._c.execute(q.order_by(g.created_at, g.id))]

    def ended_holders(self, provider: str, privilege: str) -> set[str]:
        """Users who held this privilege through a grant that was active and has ended."""
        g = t.grants.c
        q = (
            sa.select(g.user_id)
            .where(
                g.provider == provider,
                g.privilege == privilege,
                g.status.in_([str(s) for s in ENDED_GRANT_STATES]),
            )
            .distinct()
        )
        return set(self._c.execute(q).scalars())

    def grant_counts(self) -> dict[GrantStatus, int]:
        """How many grants are in each state (states with none are absent)."""
        q = sa.select(t.grants.c.status, sa.func.count()).group_by(t.grants.c.status)
        return {GrantStatus(status): int(n) for status, n in self._c.execute(q)}

    def add_standing_snapshot(self, snapshot: StandingSnapshot) -> None:
        """Record who held a managed privilege without a grant."""
        self._c.execute(
            t.standing_snapshots.insert().values(
                taken_at=snapshot.taken_at,
                provider=snapshot.provider,
                privilege=snapshot.privilege,
                members=list(snapshot.members),
            )
        )

    def standing_snapshots(self, *, since: datetime | None = None) -> list[StandingSnapshot]:
        """Snapshots oldest first (all, or those taken at or after ``since``)."""
        s = t.standing_snapshots.c
        q = sa.select(t.standing_snapshots)
        if since is not None:
            q = q.where(s.taken_at >= since)
        return [
            StandingSnapshot(
                taken_at=r.taken_at,
                provider=r.provider,
                privilege=r.privilege,
                members=tuple(r.members),
            )
            for r in self._c.execute(q.order_by(s.taken_at, s.id))
        ]

    def early_revoked_serials(self, now: datetime) -> list[int]:
        """Serials of grants ended early (released/revoked) whose window is still open."""
        q = (
            sa.select(t.grants.c.serial)
            .where(
                t.grants.c.serial.is_not(None),
                t.grants.c.status.in_(
                    [
                        str(GrantStatus.REVOKING),
                        str(GrantStatus.REVOKE_FAILED),
                        str(GrantStatus.REVOKED),
                    ]
                ),
                t.grants.c.end_reason.in_([str(EndReason.RELEASED), str(EndReason.REVOKED)]),
                t.grants.c.not_after > now,
            )
            .order_by(t.grants.c.serial)
        )
        return [int(s) for s in self._c.execute(q).scalars()]

    # audit -----------------------------------------------------------------------------------
    def append_audit(self, draft: AuditDraft) -> AuditEvent:
        """Append after the head, which is locked until commit (one chain across instances).

        The head row is read (and locked) at the first append of the transaction; the events
        and the new head are written by :meth:`flush` (one multi-row insert, one update) before
        the commit or any read of the chain in this transaction: a burst of expiries appending
        hundreds of events in one transaction costs two statements, not three per event."""
        if self._head is None:
            row = self._c.execute(
                sa.select(t.audit_head.c.seq, t.audit_head.c.hash)
                .where(t.audit_head.c.id == 1)
                .with_for_update()
            ).one()
            self._head = (int(row.seq), str(row.hash))
        seq, prev = self._head[0] + 1, self._head[1]
        event = chain(seq, draft, prev)
        self._pending.append(
            {
                "seq": event.seq,
                "at": format_time(event.at),
                "actor": event.actor,
                "action": event.action,
                "subject": event.subject,
                "details": event.details,
                "prev_hash": event.prev_hash,
                "hash": event.hash,
            }
        )
        self._head = (seq, event.hash)
        return event

    def flush(self) -> None:
        """Write the events appended since the last flush and the chain head (called by
        :meth:`SqlStore.transaction` before committing, and before the chain is read)."""
        if not self._pending or self._head is None:
            return
        self._c.execute(_APPEND_EVENT, self._pending)
        seq, digest = self._head
        self._c.execute(
            t.audit_head.update().where(t.audit_head.c.id == 1).values(seq=seq, hash=digest)
        )
        self._pending = []

    def audit_events(self, *, after_seq: int = 0, limit: int | None = None) -> list[AuditEvent]:
        """Events with ``seq > after_seq`` in sequence order."""
        self.flush()
        q = (
            sa.select(t.audit_events)
            .where(t.audit_events.c.seq > after_seq)
            .order_by(t.audit_events.c.seq)
        )
        if limit is not None:
            q = q.limit(limit)
        return [_event(r) for r in self._c.execute(q)]

    def iter_audit(self, batch: int = 5000) -> Iterator[AuditEvent]:
        """Every event in sequence order, ``batch`` rows at a time."""
        after = 0
        while True:
            page = self.audit_events(after_seq=after, limit=batch)
            yield from page
            if len(page) < batch:
                return
            after = page[-1].seq

    def iter_audit_rows(self, batch: int = 5000) -> Generator[StoredEvent, None, None]:
        """Every event as stored, in sequence order, from one query streamed ``batch`` rows at a
        time: JSON as text, nothing decoded."""
        self.flush()
        e = t.audit_events.c
        q = sa.select(
            e.seq,
            e.at,
            e.actor,
            e.action,
            sa.cast(e.subject, sa.Text),
            sa.cast(e.details, sa.Text),
            e.prev_hash,
            e.hash,
        ).order_by(e.seq)
        # The driver's own cursor: plain tuples, no row object per event (PostgreSQL: named, so
        # server-side); closed if the caller stops early.
        dbapi: Any = self._c.connection.dbapi_connection  # open: we are in a transaction
        postgres = self._c.dialect.name == "postgresql"
        cursor = dbapi.cursor(name="keyturn_audit_rows") if postgres else dbapi.cursor()
        try:
            cursor.execute(str(q.compile(dialect=self._c.dialect)))
            while rows := cursor.fetchmany(batch):
                yield from rows
        finally:
            cursor.close()

    def audit_head(self) -> tuple[int, str] | None:
        """The head row's ``(seq, hash)``; None while the chain is empty."""
        self.flush()
        row = self._c.execute(
            sa.select(t.audit_head.c.seq, t.audit_head.c.hash).where(t.audit_head.c.id == 1)
        ).first()
        return (int(row.seq), str(row.hash)) if row is not None and row.seq > 0 else None
