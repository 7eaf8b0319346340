"""End-to-end fixtures: the real app (SQLite store, SSH CA provider) over HTTP."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from keyturn import bootstrap, lab
from keyturn.bootstrap import App
from keyturn.entrypoints.api.app import create_app
from keyturn.entrypoints.cli import app as cli_app
from keyturn.entrypoints.server import Server
from tests.conftest import TOKENS, example_data, load

with warnings.catch_warnings():
    # Starlette >= 1.x warns at import when the TestClient runs on httpx rather than httpx2;
    # the project depends on httpx, so this one import-time notice is expected.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


class Api:
    """A TestClient around the real app, plus helpers to call it as a configured user."""

    def __init__(self, client: TestClient, app: App) -> None:
        self.client = client
        self.app = app

    def call(self, user: str | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request as ``user`` (None: no Authorization header)."""
        headers = dict(kwargs.pop("headers", None) or {})
        if user is not None:
            headers["Authorization"] = f"Bearer {TOKENS[user]}"
        return self.client.request(method, path, headers=headers, **kwargs)

    def get(self, user: str | None, path: str, **kwargs: Any) -> httpx.Response:
        """GET as ``user``."""
        return self.call(user, "GET", path, **kwargs)

    def post(self, user: str | None, path: str, **kwargs: Any) -> httpx.Response:
        """POST as ``user``."""
        return self.call(user, "POST", path, **kwargs)

    def request_count(self) -> int:
        """How many access requests exist (seen by the admin)."""
        response = self.get("sam", "/v1/requests", params={"limit": 1000})
        assert response.status_code == 200, response.text
        return len(response.json()["items"])

    def audit_count(self) -> int:
        """How many audit events exist (seen by the admin)."""
        response = self.get("sam", "/v1/audit", params={"limit": 10_000})
        assert response.status_code == 200, response.text
        return len(response.json()["items"])

    def grant_count(self) -> int:
        """How many grants exist (seen by the admin)."""
        response = self.get("sam", "/v1/grants", params={"limit": 1000})
        assert response.status_code == 200, response.text
        return len(response.json()["items"])

    def snapshot(self) -> tuple[int, int, int]:
        """(requests, grants, audit events): compared before and after a refused call."""
        return self.request_count(), self.grant_count(), self.audit_count()


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[App]:
    """The real Keyturn: SQLite store in tmp_path, the real SSH certificate provider, session
    recordings read from ``tmp_path/recordings``."""
    data = example_data(tmp_path)
    data["gateway"] = {"recordings_dir": str(tmp_path / "recordings")}
    app = bootstrap.build(load(data))
    yield app
    app.close()


@pytest.fixture
def api(wired: App) -> Iterator[Api]:
    """The HTTP API over the real app, through a TestClient (closed at teardown)."""
    with TestClient(create_app(wired)) as client:
        yield Api(client, wired)


@pytest.fixture
def pubkey_path(tmp_path: Path) -> Path:
    """A real Ed25519 public key file (``.../k/id_ed25519.pub``), made by ssh-keygen."""
    return lab.make_user_key(tmp_path / "k" / "id_ed25519", "x")


@pytest.fixture
def pubkey(pubkey_path: Path) -> str:
    """A real Ed25519 public key line."""
    return pubkey_path.read_text()


@pytest.fixture
def live_server(wired: App) -> Iterator[str]:
    """The API and the expiry worker on a free loopback port; yields the base URL."""
    port = lab.free_port()
    server = Server(wired, "127.0.0.1", port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ambient CLI settings: no KEYTURN_* variables, an empty config directory and home."""
    for name in ("KEYTURN_URL", "KEYTURN_TOKEN", "KEYTURN_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def cli(url: str, user: str, *args: str) -> Any:
    """Run the CLI in-process as ``user`` against ``url``; returns the Click result."""
    return CliRunner().invoke(cli_app, ["--url", url, "--token", TOKENS[user], *args])


def succeeded(result: Any) -> str:
    """The stdout of a successful run (fails the test with its output otherwise)."""
    assert result.exception is None, (result.exception, result.output)
    assert result.exit_code == 0, result.output
    out: str = result.stdout
    return out
