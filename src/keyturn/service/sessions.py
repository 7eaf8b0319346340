"""Gateway sessions: who may open one, their records and audit events, their recordings.

The SSH gateway (``keyturn.entrypoints.gateway``) calls these functions; they hold the rules:
a session needs a Keyturn certificate that is exactly the one issued for an active grant of the
SSH user name's target; every session, refusal, refused channel and best-effort command line is
an audit event; a session's recording hash is chained when it ends, so ``keyturn audit verify``
detects an edited or deleted recording.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keyturn.adapters.providers.ssh_ca import key_id
from keyturn.adapters.recording import file_digest, recording_path
from keyturn.config import RoleConfig, TargetConfig, UserConfig
from keyturn.domain.audit import AuditDraft, AuditEvent, VerifyResult
from keyturn.domain.errors import Forbidden, InvalidInput, NotFound
from keyturn.domain.model import Grant, GrantStatus
from keyturn.domain.sessions import (
    COMMAND_MAX,
    EndReason,
    Session,
    SessionKind,
    SessionStatus,
)
from keyturn.service.deps import Deps

GATEWAY_ACTOR = "system:gateway"
_GRANT_KEY_ID = re.compile(r"^keyturn:grant=(grt_[0-9a-f]{1,64}):request=[^:]+:user=[^:]+$")


@dataclass(frozen=True)
class Authorized:
    """What a certificate was found to open: an active grant for this target, and its role."""

    grant: Grant
    target: TargetConfig
    role: RoleConfig


def grant_id_of(cert_key_id: str) -> str | None:
    """The grant a Keyturn certificate's key id names (``keyturn:grant=…:request=…:user=…``),
    or None for any other key id (the gateway's own, a break-glass kit's, a foreign CA's)."""
    match = _GRANT_KEY_ID.fullmatch(cert_key_id)
    return match.group(1) if match else None


def authorize(deps: Deps, *, target_name: str, cert_key_id: str, serial: int) -> Authorized:
    """Check that a certificate (already verified as signed by Keyturn's CA and in its window)
    is the one issued for an active grant covering ``target_name``.

    Raises:
        Forbidden: why not (no such grant, another target, ended, not an SSH grant, a key id or
            serial that is not the grant's own, a target the gateway cannot reach safely).
    """
    grant_id = grant_id_of(cert_key_id)
    if grant_id is None:
        raise Forbidden("the certificate was not issued by Keyturn for a grant", reason="key_id")
    with deps.store.transaction() as tx:
        try:
            grant = tx.get_grant(grant_id)
        except NotFound:
            raise Forbidden("the certificate's grant does not exist", reason="no_grant") from None
    now = deps.clock.now()
    if grant.provider != "ssh" or key_id(grant) != cert_key_id or grant.serial != serial:
        raise Forbidden("the certificate is not the one issued for its grant", reason="mismatch")
    if grant.status is not GrantStatus.ACTIVE or not grant.not_before <= now < grant.not_after:
        raise Forbidden(f"grant {grant.id} is not active", reason="grant_inactive", grant=grant.id)
    if grant.target != target_name:
        raise Forbidden(
            f"grant {grant.id} is for target {grant.target}, not {target_name}",
            reason="other_target",
            grant=grant.id,
        )
    target = deps.config.target(target_name)
    role = deps.config.role(grant.role)
    if target is None or role is None:
        raise Forbidden(f"target {target_name} is no longer configured", reason="no_target")
    if target.host_key is None:
        raise Forbidden(
            f"target {target_name} has no host_key configured; the gateway does not connect to "
            "a host it cannot authenticate",
            reason="no_host_key",
        )
    return Authorized(grant, target, role)


def grant_subject(grant: Grant) -> dict[str, str]:
    """The audit subject of a gateway event about a grant (no session yet)."""
    return {
        "grant_id": grant.id,
        "request_id": grant.request_id,
        "user_id": grant.user_id,
        "role": grant.role,
        "target": grant.target,
    }


def refused(
    deps: Deps,
    *,
    reason: str,
    message: str,
    grant: Grant | None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Record a refused login, session or channel as ``session.refused``."""
    subject = grant_subject(grant) if grant is not None else {}
    body = {"reason": reason, "message": message[:500], **(details or {})}
    with deps.store.transaction() as tx:
        return tx.append_audit(
            AuditDraft(deps.clock.now(), GATEWAY_ACTOR, "session.refused", subject, body)
        )


def new_session(
    deps: Deps,
    auth: Authorized,
    *,
    kind: SessionKind,
    command: str | None,
    client: str,
) -> Session:
    """A session record for ``auth``'s grant, relayed by this gateway instance, not yet stored
    (its recording comes first)."""
    session_id = deps.new_id("ses")
    grant = auth.grant
    return Session(
        id=session_id,
        grant_id=grant.id,
        request_id=grant.request_id,
        user_id=grant.user_id,
        role=grant.role,
        target=grant.target,
        kind=kind,
        started_at=deps.clock.now(),
        recording=f"{session_id}.cast",
        client=client[:128],
        gateway=deps.config.gateway.instance_name,
        command=command[:COMMAND_MAX] if command is not None else None,
    )


def open_session(deps: Deps, session: Session, *, details: dict[str, Any]) -> Session:
    """Store the session and ``session.started`` before anything is relayed."""
    with deps.store.transaction() as tx:
        tx.add_session(session)
        tx.append_audit(
            AuditDraft(
                session.started_at,
                session.user_id,
                "session.started",
                session.subject(),
                {
                    "kind": str(session.kind),
                    "command": session.command,
                    "client": session.client,
                    "recording": session.recording,
                    **details,
                },
            )
        )
    return session


def connection_event(deps: Deps, grant: Grant, action: str, details: dict[str, Any]) -> None:
    """An event about a gateway connection rather than one session (``session.forwarded``)."""
    with deps.store.transaction() as tx:
        tx.append_audit(
            AuditDraft(deps.clock.now(), grant.user_id, action, grant_subject(grant), details)
        )


def end_session(
    deps: Deps,
    session: Session,
    *,
    reason: EndReason,
    exit_status: int | None,
    digest: tuple[str, int] | None,
    details: dict[str, Any] | None = None,
) -> Session:
    """Mark the session ended and chain its recording's SHA-256 and size (``session.ended``)."""
    now = deps.clock.now()
    ended = dataclasses.replace(
        session,
        status=SessionStatus.ENDED,
        ended_at=now,
        end_reason=reason,
        exit_status=exit_status,
        recording_sha256=digest[0] if digest else None,
        recording_bytes=digest[1] if digest else None,
    )
    body: dict[str, Any] = {
        "reason": str(reason),
        "exit_status": exit_status,
        "recording": session.recording,
        "sha256": ended.recording_sha256,
        "bytes": ended.recording_bytes,
        "seconds": round((now - session.started_at).total_seconds(), 3),
        **(details or {}),
    }
    with deps.store.transaction() as tx:
        stored = tx.get_session(session.id)
        if stored.status is SessionStatus.ENDED:
            return stored  # ended already (another gateway's recovery): one end event only
        tx.save_session(ended)
        tx.append_audit(AuditDraft(now, GATEWAY_ACTOR, "session.ended", ended.subject(), body))
    return ended


def session_event(
    deps: Deps, session: Session, action: str, items: Iterable[dict[str, Any]]
) -> None:
    """Append one event per item (``session.command`` lines, ``session.file`` transfers,
    ``session.channel_refused`` attempts) under the session's subject, in one transaction."""
    rows = list(items)
    if not rows:
        return
    now = deps.clock.now()
    with deps.store.transaction() as tx:
        for details in rows:
            tx.append_audit(AuditDraft(now, session.user_id, action, session.subject(), details))


def current_grants(deps: Deps, grant_ids: Iterable[str]) -> dict[str, Grant]:
    """The grants that exist among ``grant_ids``, as stored now (one transaction)."""
    found: dict[str, Grant] = {}
    with deps.store.transaction() as tx:
        for grant_id in set(grant_ids):
            try:
                found[grant_id] = tx.get_grant(grant_id)
            except NotFound:
                continue
    return found


def grant_states(deps: Deps, grant_ids: Iterable[str]) -> tuple[dict[str, str], dict[str, Grant]]:
    """:func:`grants_ended`, and the grants as stored now (an extension moves ``not_after``),
    from one read."""
    ids = set(grant_ids)
    current = current_grants(deps, ids)
    now = deps.clock.now()
    ended = {}
    for grant_id in ids:
        grant = current.get(grant_id)
        if grant is None:
            ended[grant_id] = "deleted"
        elif grant.status is not GrantStatus.ACTIVE:
            ended[grant_id] = str(grant.end_reason or grant.status)
        elif now >= grant.not_after:
            ended[grant_id] = "expired"
    return ended, current


def grants_ended(deps: Deps, grant_ids: Iterable[str]) -> dict[str, str]:
    """Of these grants, those that no longer allow a session, with why (``expired``,
    ``released``, ``revoked``, ``deleted`` …). A grant past ``not_after`` counts as ended even
    before the worker has revoked it."""
    return grant_states(deps, grant_ids)[0]


def recover_interrupted(deps: Deps) -> list[Session]:
    """End the sessions this gateway instance (``gateway.instance``) left ``live`` when it
    crashed, chaining what their recordings hold; other instances' sessions are theirs."""
    me = deps.config.gateway.instance_name
    with deps.store.transaction() as tx:
        live = [
            s for s in tx.list_sessions(status=SessionStatus.LIVE, limit=100_000) if s.gateway == me
        ]
    recordings = deps.config.gateway.recordings_dir
    return [
        end_session(
            deps,
            s,
            reason=EndReason.INTERRUPTED,
            exit_status=None,
            digest=file_digest(recording_path(recordings, s.recording)),
        )
        for s in live
    ]


def visible(deps: Deps, viewer: UserConfig, session: Session) -> bool:
    """Admins see every session; others their own."""
    return deps.is_admin(viewer) or session.user_id == viewer.id


def list_sessions(
    deps: Deps,
    viewer: UserConfig,
    *,
    grant_id: str | None = None,
    user_id: str | None = None,
    limit: int = 100,
) -> list[Session]:
    """Sessions the viewer may see, newest first (non-admins: only their own)."""
    if not deps.is_admin(viewer):
        if user_id not in (None, viewer.id):
            return []
        user_id = viewer.id
    with deps.store.transaction() as tx:
        return tx.list_sessions(grant_id=grant_id, user_id=user_id, limit=limit)


def get_session(deps: Deps, viewer: UserConfig, session_id: str) -> tuple[Session, list[str]]:
    """A session and its best-effort command log.

    Raises:
        NotFound: no such session, or not visible to the viewer.
    """
    with deps.store.transaction() as tx:
        session = tx.get_session(session_id)
        if not visible(deps, viewer, session):
            raise NotFound(f"no session {session_id!r}", session_id=session_id)
        commands = [
            str(e.details.get("command", ""))
            for e in tx.iter_audit()
            if e.action == "session.command" and e.subject.get("session_id") == session_id
        ]
    return session, commands


def recording_file(deps: Deps, viewer: UserConfig, session_id: str) -> Path:
    """The recording of a visible session.

    Raises:
        NotFound: no such session or recording.
    """
    session, _ = get_session(deps, viewer, session_id)
    try:
        path = recording_path(deps.config.gateway.recordings_dir, session.recording)
    except InvalidInput:
        raise NotFound(f"session {session_id} has no readable recording") from None
    if not path.is_file():
        raise NotFound(f"the recording of session {session_id} is missing", session_id=session_id)
    return path


class RecordingCheck:
    """Collects ``session.ended`` events while the chain is verified, then re-hashes each
    recording against the hash chained when its session ended."""

    def __init__(self, recordings_dir: Path) -> None:
        self._dir = recordings_dir
        self._ended: list[AuditEvent] = []

    def watch(self, events: Iterable[AuditEvent]) -> Iterator[AuditEvent]:
        """Pass events through, remembering those that chain a recording's hash."""
        for event in events:
            if event.action == "session.ended" and event.details.get("sha256"):
                self._ended.append(event)
            yield event

    def verify(self, chain: VerifyResult) -> VerifyResult:
        """``chain`` if it already failed or every recording matches; else the first
        ``session.ended`` event whose recording was changed, truncated or deleted."""
        if not chain.ok:
            return chain
        for event in self._ended:
            name = str(event.details.get("recording", ""))
            try:
                found = file_digest(recording_path(self._dir, name))
            except InvalidInput:
                found = None
            expected = (event.details["sha256"], event.details.get("bytes"))
            if found is None or found != expected:
                what = "is missing" if found is None else "was changed"
                session_id = event.subject.get("session_id")
                return dataclasses.replace(
                    chain,
                    ok=False,
                    first_bad_seq=event.seq,
                    reason=f"the recording of session {session_id} ({name}) {what}",
                )
        return chain
