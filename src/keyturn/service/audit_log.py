"""Reading and verifying the audit chain."""

from __future__ import annotations

from keyturn.config import UserConfig
from keyturn.domain.audit import AuditDraft, AuditEvent, VerifyResult, verify_chain
from keyturn.service.deps import Deps
from keyturn.service.sessions import RecordingCheck


def verify(deps: Deps) -> VerifyResult:
    """Check the whole chain and its head (RFC 8785 + SHA-256 links; see ``domain.audit``),
    then every session recording against the SHA-256 chained when its session ended."""
    recordings = RecordingCheck(deps.config.gateway.recordings_dir)
    with deps.store.transaction() as tx:
        chain = verify_chain(recordings.watch(tx.iter_audit()), tx.audit_head())
    return recordings.verify(chain)


def list_events(
    deps: Deps, viewer: UserConfig, *, after_seq: int = 0, limit: int = 100
) -> list[AuditEvent]:
    """Events after ``after_seq``; admins see all, others only events they are subject of."""
    with deps.store.transaction() as tx:
        events = tx.audit_events(
            after_seq=after_seq, limit=None if not deps.is_admin(viewer) else limit
        )
    if deps.is_admin(viewer):
        return events
    own = [e for e in events if e.actor == viewer.id or e.subject.get("user_id") == viewer.id]
    return own[:limit]


def record(deps: Deps, actor: str, action: str, details: dict[str, object]) -> AuditEvent:
    """Append a system event (server started, configuration loaded …)."""
    with deps.store.transaction() as tx:
        return tx.append_audit(AuditDraft(deps.clock.now(), actor, action, {}, details))
