"""The CLI's HTTP client and its settings (server URL and token).

Settings come from, in order: ``--url``/``--token``; ``KEYTURN_URL``/``KEYTURN_TOKEN``; the file
``cli.yaml`` in the user's config directory (``~/.config/keyturn/cli.yaml`` on Linux) with keys
``url`` and ``token``. The token is sent only in the ``Authorization`` header, never in a URL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import typer
import yaml

from keyturn.domain.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    KeyturnError,
    NotFound,
    ProviderError,
    Unauthenticated,
)

DEFAULT_URL = "http://127.0.0.1:8080"


class ServerUnreachable(KeyturnError):
    """The Keyturn server could not be reached."""


_BY_STATUS: dict[int, type[KeyturnError]] = {
    400: InvalidInput,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    502: ProviderError,
}


def settings_file() -> Path:
    """Where the CLI's own settings live."""
    return Path(typer.get_app_dir("keyturn")) / "cli.yaml"


@dataclass(frozen=True)
class Settings:
    """Resolved client settings."""

    url: str
    token: str | None


def resolve(url: str | None, token: str | None) -> Settings:
    """Apply the precedence rules above."""
    stored: dict[str, Any] = {}
    path = settings_file()
    if path.exists():
        loaded = yaml.safe_load(path.read_text()) or {}
        stored = loaded if isinstance(loaded, dict) else {}
    return Settings(
        url=(url or os.environ.get("KEYTURN_URL") or stored.get("url") or DEFAULT_URL).rstrip("/"),
        token=token or os.environ.get("KEYTURN_TOKEN") or stored.get("token"),
    )


class Client:
    """A thin JSON client; problem details become Keyturn errors."""

    def __init__(self, settings: Settings, *, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
        self._http = httpx.Client(base_url=settings.url, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request; return the decoded JSON (or text for text responses).

        Raises:
            KeyturnError subclass per HTTP status; ServerUnreachable on connection errors.
        """
        response = self._send(method, path, **kwargs)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def download(self, path: str, **kwargs: Any) -> bytes:
        """GET ``path`` and return the body's bytes exactly as sent (no decoding).

        Raises:
            KeyturnError subclass per HTTP status; ServerUnreachable on connection errors.
        """
        return self._send("GET", path, **kwargs).content

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(
                f"cannot reach the Keyturn server at {self._http.base_url} ({type(exc).__name__})"
            ) from exc
        if response.status_code >= 400:
            raise _error(response)
        return response

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()


def _error(response: httpx.Response) -> KeyturnError:
    try:
        body = response.json()
        detail = str(body.get("detail") or body.get("title") or response.reason_phrase)
    except ValueError:
        detail = response.text[:200] or response.reason_phrase
    cls = _BY_STATUS.get(response.status_code, KeyturnError)
    if cls is ProviderError:
        return ProviderError(detail, retryable=True)
    return cls(detail)
