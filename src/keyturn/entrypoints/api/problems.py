"""The one map from Keyturn errors to RFC 9457 problem details (``application/problem+json``)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from keyturn.domain import errors as e

PROBLEM_BASE = "https://keyturn.dev/problems/"
MEDIA_TYPE = "application/problem+json"

STATUS: list[tuple[type[e.KeyturnError], int, str]] = [
    (e.TooLarge, 413, "too-large"),
    (e.InvalidInput, 400, "invalid-input"),
    (e.ConfigError, 400, "invalid-config"),
    (e.Unauthenticated, 401, "unauthenticated"),
    (e.Forbidden, 403, "forbidden"),
    (e.NotFound, 404, "not-found"),
    (e.Conflict, 409, "conflict"),
    (e.ProviderError, 502, "provider-error"),
]


RESERVED = frozenset({"type", "title", "status", "detail", "instance"})


def problem(status: int, slug: str, title: str, detail: str, **extra: Any) -> JSONResponse:
    """Build an RFC 9457 response. Extension members must not carry secrets; members that
    would shadow the standard ones (RFC 9457 §3.1) are dropped."""
    body: dict[str, Any] = {k: v for k, v in extra.items() if k not in RESERVED}
    body.update(type=PROBLEM_BASE + slug, title=title, status=status, detail=detail)
    headers = {"WWW-Authenticate": _challenge(extra.get("schemes"))} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _challenge(schemes: object) -> str:
    """``WWW-Authenticate`` (RFC 9110 §11.6.1): one challenge per scheme the refusal names in
    ``schemes`` (the alert webhooks: Bearer and/or Basic), else Bearer (user API tokens)."""
    names = [s for s in schemes if isinstance(s, str)] if isinstance(schemes, list) else []
    return ", ".join(f'{name} realm="keyturn"' for name in names or ["Bearer"])


def _for_error(exc: e.KeyturnError) -> JSONResponse:
    for cls, status, slug in STATUS:
        if isinstance(exc, cls):
            title = slug.replace("-", " ").capitalize()
            return problem(status, slug, title, exc.message, **exc.details)
    return problem(500, "internal", "Internal error", exc.message)


def install(app: FastAPI) -> None:
    """Register the handlers: Keyturn errors, request validation (400), unknown routes (404)."""

    @app.exception_handler(e.KeyturnError)
    async def keyturn_error(_request: Request, exc: e.KeyturnError) -> JSONResponse:
        return _for_error(exc)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, _exc: Exception) -> JSONResponse:
        return problem(500, "internal", "Internal error", "an unexpected error occurred")

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"path": ".".join(str(p) for p in err["loc"][1:]) or "body", "message": err["msg"]}
            for err in exc.errors()
        ]
        first = errors[0] if errors else {"path": "body", "message": "invalid"}
        detail = f"{first['path']}: {first['message']}"
        return problem(400, "invalid-input", "Invalid input", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return problem(exc.status_code, slug, slug.replace("-", " ").capitalize(), str(exc.detail))
