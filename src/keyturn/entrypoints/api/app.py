"""The HTTP API (FastAPI). Routes only parse, call a service function, and render.

Every endpoint but ``/healthz``, ``/readyz`` and ``/metrics`` needs
``Authorization: Bearer <token>``; the token's SHA-256 is looked up among the configured users
(the token itself is never stored).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyturn import __version__
from keyturn.bootstrap import App
from keyturn.config import NAME_PATTERN, UserConfig
from keyturn.domain.alerts import is_firing
from keyturn.domain.break_glass import RECORD_MAX_BYTES
from keyturn.domain.durations import parse_iso_duration
from keyturn.domain.errors import Forbidden, InvalidInput, NotFound, TooLarge, Unauthenticated
from keyturn.domain.model import GrantStatus, RequestStatus, Verdict, decision_to_data
from keyturn.entrypoints.api import problems
from keyturn.entrypoints.api.schemas import (
    AccessRequestBody,
    BreakGlassBody,
    CloseReviewBody,
    CommentBody,
    ExplainBody,
    ExtendBody,
    ReconcileBody,
    render_alert,
    render_always_on,
    render_event,
    render_grant,
    render_post_incident_review,
    render_request,
    render_session,
    render_session_detail,
    render_standing,
)
from keyturn.service import access, alerts, audit_log, break_glass, grants, sessions, standing
from keyturn.service.access import RequestInput
from keyturn.service.break_glass import BreakGlassInput

_bearer = HTTPBearer(auto_error=False)


def token_digest(token: str) -> str:
    """SHA-256 (hex) of an API token, as stored in the configuration."""
    return hashlib.sha256(token.encode()).hexdigest()


async def principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> UserConfig:
    """The user whose token's SHA-256 matches.

    Looked up by the digest (one dict lookup, not a scan of every user), then compared in
    constant time. Nothing secret is timed: the caller chooses the token, not its digest, and
    a digest says nothing about any other token. ``async``: no I/O, so it runs on the event
    loop instead of taking a trip through the thread pool before every endpoint.

    Raises:
        Unauthenticated: no bearer token, or a token that matches no user.
    """
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise Unauthenticated("send 'Authorization: Bearer <token>'")
    digest = token_digest(creds.credentials)
    users: dict[str, UserConfig] = request.app.state.keyturn.users_by_token_digest()
    user = users.get(digest)
    if user is None or not hmac.compare_digest(user.token_sha256 or "", digest):
        raise Unauthenticated("unknown token")
    return user


User = Annotated[UserConfig, Depends(principal)]
SessionId = Annotated[
    str,
    PathParam(pattern=r"^ses_[0-9a-f]{1,64}$", description="a session id: ses_ and hex digits"),
]
GrantIdFilter = Annotated[
    str | None, Query(pattern=r"^grt_[0-9a-f]{1,64}$", description="only this grant's sessions")
]
UserIdFilter = Annotated[
    str | None, Query(pattern=NAME_PATTERN, description="only this user's sessions")
]
#: media type of an asciicast recording (https://docs.asciinema.org/manual/asciicast/v2/)
CAST_MEDIA_TYPE = "application/x-asciicast"
_CHUNK = 256 * 1024


async def _capped_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without reading them all.

    Raises:
        TooLarge: ``Content-Length`` or the bytes received exceed ``limit``.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body is {declared} bytes; the limit is {limit}", limit=limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is over the limit of {limit} bytes", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _recording_response(path: Path, session_id: str) -> StreamingResponse:
    """The recording as it is now. Its size is read once and exactly that many bytes are sent,
    so a live session's recording, which grows as it is streamed, never overruns its
    ``Content-Length``.

    Raises:
        NotFound: the file is gone.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise NotFound(f"the recording of session {session_id} is missing") from exc
    headers = {
        "Content-Length": str(size),
        "Content-Disposition": f'attachment; filename="{session_id}.cast"',
    }
    return StreamingResponse(_first_bytes(path, size), media_type=CAST_MEDIA_TYPE, headers=headers)


def _first_bytes(path: Path, size: int) -> Iterator[bytes]:
    """The first ``size`` bytes of ``path`` in chunks (opened only when streaming starts)."""
    with path.open("rb") as handle:
        while size > 0 and (chunk := handle.read(min(_CHUNK, size))):
            size -= len(chunk)
            yield chunk


def create_app(app: App) -> FastAPI:
    """Build the FastAPI application around a wired Keyturn."""
    deps = app.deps
    api = FastAPI(title="Keyturn", version=__version__, description=__doc__)
    api.state.keyturn = app
    problems.install(api)

    @api.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @api.get("/readyz", tags=["health"])
    def readyz(response: Response) -> dict[str, Any]:
        """Readiness: the store answers and every provider passes its check (the KRL is in
        place; the directory accepts Keyturn's bind and its groups can be read). ``details``
        shows each on-call source (``ok``, ``stale``: failing but its last good state is used,
        ``failed``: nobody counts as on call for it); a source never makes Keyturn unready,
        because policy fails closed without it. Errors and warnings (which may name a feed's
        path or people) are not shown here, only in the server's log."""
        checks: dict[str, str] = {}
        try:
            with deps.store.transaction() as tx:
                tx.audit_head()
            checks["store"] = "ok"
        except Exception as exc:  # readiness reports any failure as a check result
            checks["store"] = f"failed: {type(exc).__name__}"
        checks |= app.readiness()
        ready = all(v == "ok" for v in checks.values())
        response.status_code = 200 if ready else 503
        return {
            "status": "ready" if ready else "not ready",
            "checks": checks,
            "details": {
                "oncall": {
                    name: {"state": st["state"], "last_success": st["last_success"]}
                    for name, st in app.oncall_status().items()
                },
                "break_glass": _kit_details(),
            },
        }

    def _kit_details() -> dict[str, Any]:
        """The offline kit's state for ``/readyz``: ``none``, ``ready`` or ``spent`` (used and
        not yet rotated); never makes Keyturn unready."""
        try:
            status = break_glass.kit_status(deps)
        except Exception as exc:  # readiness reports any failure as a detail
            return {"state": f"unknown: {type(exc).__name__}"}
        return {k: status.get(k) for k in ("state", "kit_id", "spent_at")}

    @api.get("/v1/whoami", tags=["identity"])
    def whoami(user: User) -> dict[str, Any]:
        """The authenticated principal."""
        return {
            "id": user.id,
            "name": user.name,
            "groups": list(user.groups),
            "admin": deps.is_admin(user),
        }

    @api.post("/v1/requests", status_code=201, tags=["requests"])
    def create_request(body: AccessRequestBody, user: User) -> JSONResponse:
        """Request a role on a target; decided at once, granted at once when auto-approved."""
        data = RequestInput(
            role=body.role,
            target=body.target,
            duration=parse_iso_duration(body.duration),
            justification=body.justification,
            ticket=body.ticket,
            ssh_public_key=body.ssh_public_key,
            start=body.start,
        )
        view = access.request_access(deps, user, data)
        # Rendered here, in the request's thread: a dict return would be validated against
        # ``dict[str, Any]`` in a second trip through the thread pool (FastAPI does that for
        # sync endpoints), which added latency on the hot path and nothing else.
        return JSONResponse(render_request(view, user.id), status_code=201)

    @api.post("/v1/break-glass", status_code=201, tags=["break-glass"])
    def create_break_glass(body: BreakGlassBody, user: User) -> dict[str, Any]:
        """Emergency access without review, for members of the role's break-glass group: capped
        by the role's ``break_glass.max_duration``, justification mandatory, approvers and
        security told at once, a post-incident review opened."""
        data = BreakGlassInput(
            role=body.role,
            target=body.target,
            justification=body.justification,
            duration=parse_iso_duration(body.duration) if body.duration is not None else None,
            ssh_public_key=body.ssh_public_key,
        )
        view = break_glass.break_glass(deps, user, data)
        return {
            "request": render_request(view.access, user.id),
            "review": render_post_incident_review(view.review, deps.clock.now()),
        }

    @api.get("/v1/break-glass/reviews", tags=["break-glass"])
    def list_incident_reviews(user: User, all: bool = False) -> dict[str, Any]:
        """Post-incident reviews you may see (open ones unless ``all``), newest first."""
        now = deps.clock.now()
        rows = break_glass.list_reviews(deps, user, open_only=not all)
        return {"items": [render_post_incident_review(r, now) for r in rows]}

    @api.post("/v1/break-glass/reviews/{review_id}/close", tags=["break-glass"])
    def close_incident_review(review_id: str, body: CloseReviewBody, user: User) -> dict[str, Any]:
        """Close a post-incident review with a verdict and a comment (never by the user who broke
        glass; admins and the review's reviewers)."""
        review = break_glass.close_review(deps, user, review_id, body.verdict, body.comment)
        return render_post_incident_review(review, deps.clock.now())

    @api.post("/v1/break-glass/records", status_code=201, tags=["break-glass"])
    async def import_record(request: Request, user: User) -> dict[str, Any]:
        """Admin: import an offline break-glass record (the file ``keyturn break-glass offline``
        wrote, as the body): verified against its kit's key, appended to the audit chain, its
        post-incident review opened, the kit marked spent. A record is imported once."""
        raw = await _capped_body(request, RECORD_MAX_BYTES)
        review = await run_in_threadpool(break_glass.import_record, deps, user, raw)
        return render_post_incident_review(review, deps.clock.now())

    @api.get("/v1/break-glass/kit", tags=["break-glass"])
    def kit(_user: User) -> dict[str, Any]:
        """The offline kit in force: ``state`` none, ready or spent (rotate it), its id and
        fingerprint. Never a share."""
        return break_glass.kit_status(deps)

    @api.post("/v1/policy/explain", tags=["policy"])
    def explain(body: ExplainBody, user: User) -> dict[str, Any]:
        """What the policy would decide for this request now, with the facts gathered and each
        rule's result and reason. Creates nothing. Explaining for someone else needs admin."""
        decision = access.explain(
            deps,
            user,
            requester_id=body.requester or user.id,
            role=body.role,
            target=body.target,
            duration=parse_iso_duration(body.duration),
            justification=body.justification,
        )
        return decision_to_data(decision)

    @api.post("/v1/webhooks/alertmanager", tags=["alerts"])
    async def alertmanager_webhook(request: Request) -> dict[str, Any]:
        """Prometheus Alertmanager webhook (payload version 4). Authenticate with the bearer
        token or basic credentials configured under ``alerts``."""
        return await _receive(request, "alertmanager")

    @api.post("/v1/webhooks/alerts", tags=["alerts"])
    async def generic_webhook(request: Request) -> dict[str, Any]:
        """Generic alert webhook: ``{"alerts": [{"name", "status", "severity"?, "labels"?,
        "target"?, "starts_at"?, "ends_at"?, "id"?, "summary"?}]}`` (docs/alerts.md)."""
        return await _receive(request, "generic")

    async def _receive(request: Request, source: alerts.Source) -> dict[str, Any]:
        alerts.authenticate(deps, request.headers.get("authorization"))
        limit = deps.config.alerts.max_body_bytes
        try:
            body = await _capped_body(request, limit)
        except TooLarge:
            deps.metrics.webhook_refused.labels("too_large").inc()
            raise
        received = await run_in_threadpool(
            alerts.receive, deps, source, body, request.headers.get("authorization")
        )
        return {
            "alerts": received.alerts,
            "firing": received.firing,
            "targets": list(received.targets),
        }

    @api.get("/v1/alerts", tags=["alerts"])
    def list_alerts(_user: User, target: str | None = None, all: bool = False) -> dict[str, Any]:
        """Alerts Keyturn knows: firing ones (``all=true``: resolved too), with their targets."""
        now = deps.clock.now()
        stored = alerts.current(deps, target=target, firing_only=not all)
        return {
            "items": [render_alert(s, firing=is_firing(s.alert, now)) for s in stored],
        }

    @api.get("/v1/reports/always-on", tags=["reports"])
    def report_always_on(user: User) -> dict[str, Any]:
        """Admin: requesters whose grants of a role cover most working hours (habitual
        elevation; the definition is in the response and under ``reports.always_on``)."""
        rows = standing.always_on_report(deps, user)
        return render_always_on(rows, deps.config.reports.always_on)

    @api.get("/v1/reports/break-glass", tags=["reports"])
    def report_break_glass(user: User) -> dict[str, Any]:
        """Admin: every break-glass use (online and imported offline) with its post-incident
        review, overdue ones flagged; totals; the offline kit's state."""
        data = break_glass.report(deps, user)
        now = deps.clock.now()
        data["reviews"] = [render_post_incident_review(r, now) for r in data["reviews"]]
        return data

    @api.post("/v1/admin/reload", tags=["admin"])
    def reload(user: User) -> dict[str, Any]:
        """Admin: re-read the configuration file (like ``SIGHUP``). A file that fails
        validation or its embedded policy tests is refused and the old one stays."""
        if not deps.is_admin(user):
            raise Forbidden("only admins can reload the configuration")
        return app.reload_file(user.id)

    @api.get("/v1/requests", tags=["requests"])
    def list_requests(
        user: User,
        status: RequestStatus | None = None,
        mine: bool = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Requests visible to the caller, newest first."""
        views = access.list_requests(deps, user, status=status, mine=mine, limit=limit)
        return {"items": [render_request(v, user.id) for v in views]}

    @api.get("/v1/requests/{request_id}", tags=["requests"])
    def get_request(request_id: str, user: User) -> dict[str, Any]:
        """One request with its decision, reviews and grant."""
        return render_request(access.get_request(deps, user, request_id), user.id)

    def _review(
        request_id: str, user: UserConfig, verdict: Verdict, body: CommentBody | None
    ) -> dict[str, Any]:
        view = access.review(deps, user, request_id, verdict, body.comment if body else None)
        return render_request(view, user.id)

    @api.post("/v1/requests/{request_id}/approve", tags=["requests"])
    def approve(request_id: str, user: User, body: CommentBody | None = None) -> dict[str, Any]:
        """Approve a pending request (approvers only; never the requester)."""
        return _review(request_id, user, Verdict.APPROVE, body)

    @api.post("/v1/requests/{request_id}/deny", tags=["requests"])
    def deny(request_id: str, user: User, body: CommentBody | None = None) -> dict[str, Any]:
        """Deny a pending request; one denial ends it."""
        return _review(request_id, user, Verdict.DENY, body)

    @api.post("/v1/requests/{request_id}/cancel", tags=["requests"])
    def cancel(request_id: str, user: User, body: CommentBody | None = None) -> dict[str, Any]:
        """Withdraw one's own pending request."""
        view = access.cancel(deps, user, request_id, body.comment if body else None)
        return render_request(view, user.id)

    @api.get("/v1/grants", tags=["grants"])
    def list_grants(
        user: User,
        status: GrantStatus | None = None,
        mine: bool = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Grants: admins see all, others their own."""
        items = access.list_grants(deps, user, status=status, mine=mine, limit=limit)
        return {"items": [render_grant(g, show_credentials=g.user_id == user.id) for g in items]}

    @api.post("/v1/grants/{grant_id}/release", tags=["grants"])
    def release(grant_id: str, user: User) -> dict[str, Any]:
        """End one's own grant early; the certificate is put on the KRL at once."""
        return render_grant(grants.release(deps, user, grant_id), show_credentials=False)

    @api.post("/v1/grants/{grant_id}/revoke", tags=["grants"])
    def revoke(grant_id: str, user: User) -> dict[str, Any]:
        """Admin: end any grant early; the certificate is put on the KRL at once."""
        return render_grant(grants.revoke(deps, user, grant_id), show_credentials=False)

    @api.post("/v1/grants/{grant_id}/extend", tags=["grants"])
    def extend(grant_id: str, body: ExtendBody, user: User) -> dict[str, Any]:
        """Lengthen one's own active grant (within the role's maximum total duration, if the
        policy in force now auto-approves the longer window); no gap in access."""
        extra = parse_iso_duration(body.duration)
        return render_grant(grants.extend(deps, user, grant_id, extra), show_credentials=True)

    @api.get("/v1/sessions", tags=["sessions"])
    def list_sessions(
        user: User,
        grant_id: GrantIdFilter = None,
        user_id: UserIdFilter = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Sessions through the recording gateway, newest first: admins see all, others their
        own (asking for someone else's gives an empty list)."""
        rows = sessions.list_sessions(deps, user, grant_id=grant_id, user_id=user_id, limit=limit)
        return {"items": [render_session(s) for s in rows]}

    @api.get("/v1/sessions/{session_id}", tags=["sessions"])
    def get_session(session_id: SessionId, user: User) -> dict[str, Any]:
        """One session and its best-effort command log (404 unless it is yours or you are an
        admin)."""
        session, commands = sessions.get_session(deps, user, session_id)
        return render_session_detail(session, commands)

    @api.get(
        "/v1/sessions/{session_id}/recording",
        tags=["sessions"],
        response_class=Response,
        responses={200: {"content": {CAST_MEDIA_TYPE: {}}}},
    )
    def session_recording(session_id: SessionId, user: User) -> Response:
        """The session's recording exactly as stored (asciicast v2, ``application/x-asciicast``;
        a live session's up to now). 404 unless visible to you, or when the file is missing."""
        return _recording_response(sessions.recording_file(deps, user, session_id), session_id)

    @api.post("/v1/reconcile", tags=["reconciliation"])
    def reconcile(user: User, body: ReconcileBody | None = None) -> dict[str, Any]:
        """Admin: compare managed groups with grants now; ``dry_run`` changes nothing."""
        dry_run = body.dry_run if body else False
        return standing.report_data(standing.reconcile_as(deps, user, dry_run=dry_run))

    @api.get("/v1/reports/standing", tags=["reports"])
    def report_standing(user: User, since: datetime | None = None) -> dict[str, Any]:
        """Admin: standing privileges per managed group (latest snapshot) and their count over
        time (``since``: an RFC 3339 time)."""
        if since is not None and since.tzinfo is None:
            raise InvalidInput("since must carry a UTC offset, e.g. 2026-11-01T00:00:00Z")
        return render_standing(standing.standing_report(deps, user, since=since))

    @api.get("/metrics", tags=["health"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics (text exposition format 0.0.4). Counts and group names only: no
        user ids, no secrets."""
        return Response(deps.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/audit", tags=["audit"])
    def audit(
        user: User,
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> dict[str, Any]:
        """Audit events after sequence number ``after`` (admins: all; others: their own)."""
        events = audit_log.list_events(deps, user, after_seq=after, limit=limit)
        return {"items": [render_event(e) for e in events]}

    @api.get("/v1/audit/verify", tags=["audit"])
    def audit_verify(user: User) -> dict[str, Any]:
        """Verify the whole chain; names the first bad sequence number."""
        result = audit_log.verify(deps)
        return {
            "ok": result.ok,
            "events": result.count,
            "first_bad_seq": result.first_bad_seq,
            "reason": result.reason,
            "head_hash": result.head_hash,
        }

    @api.get("/v1/ssh/ca", tags=["ssh"], response_class=Response)
    def ssh_ca(_user: User) -> Response:
        """The CA lines for targets' ``TrustedUserCAKeys``: Keyturn's user CA, then the offline
        break-glass kit's CA when one is in force (a rotated kit's line is dropped)."""
        lines = [app.ssh.ca_public_line, *break_glass.served_ca_lines(deps)]
        return Response("".join(line + "\n" for line in lines), media_type="text/plain")

    @api.get("/v1/ssh/krl", tags=["ssh"], response_class=Response)
    def ssh_krl(_user: User) -> Response:
        """The current key revocation list (binary, PROTOCOL.krl) for targets' ``RevokedKeys``."""
        data = app.ssh.krl_bytes(deps.clock.now())
        return Response(data, media_type="application/octet-stream")

    api.add_middleware(NoStore)
    return api


class NoStore:
    """``Cache-Control: no-store`` on every response that sets none. Plain ASGI: a
    ``@app.middleware("http")`` function runs each request through an extra task and memory
    streams, which cost more than the header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_no_store)
