"""End-to-end behaviour of the ``keyturn`` CLI against a live server on loopback.

Successful commands run in-process (``typer.testing.CliRunner``). Error exit codes are mapped by
``keyturn.entrypoints.cli.main`` (not by the Typer app), so those run the installed console
script as a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from keyturn import lab
from keyturn.entrypoints import cli as cli_module
from keyturn.entrypoints.cli import app
from keyturn.entrypoints.cli_client import Client
from tests.conftest import EXAMPLE, TOKENS
from tests.e2e.conftest import cli, succeeded

pytestmark = pytest.mark.usefixtures("isolated_settings")

KEYTURN = Path(sys.executable).parent / "keyturn"
CERT_PREFIX = "ssh-ed25519-cert-v01@openssh.com "


_CLIENTS: list[Client] = []


@pytest.fixture(autouse=True)
def tracked_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Client]]:
    """Record every API client the CLI makes, so a test can check that it was closed.

    Nothing is closed here on the CLI's behalf: a leaked client would surface as a
    ResourceWarning, which ``filterwarnings = error`` turns into a failure.
    """

    class Tracked(Client):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            _CLIENTS.append(self)

    monkeypatch.setattr(cli_module, "Client", Tracked)
    yield _CLIENTS
    _CLIENTS.clear()


def run(*args: str, url: str | None = None, user: str | None = None, token: str | None = None):
    """Run the installed ``keyturn`` console script; URL and token go through the environment."""
    env = dict(os.environ)
    if url is not None:
        env["KEYTURN_URL"] = url
    if user is not None:
        env["KEYTURN_TOKEN"] = TOKENS[user]
    if token is not None:
        env["KEYTURN_TOKEN"] = token
    return subprocess.run(
        [str(KEYTURN), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def request_args(pubkey_path: Path, role: str = "server-admin", duration: str = "30m") -> list[str]:
    """Arguments of ``keyturn request`` for db-1 with the test key."""
    return [
        "request",
        role,
        "--target",
        "db-1",
        "--for",
        duration,
        "--justification",
        "cli e2e",
        "--ssh-key",
        str(pubkey_path),
    ]


def pending_request_as_bob(url: str, pubkey_path: Path) -> Any:
    """bob files a high-tier request (pending review) through the CLI; returns its JSON."""
    return json.loads(
        succeeded(
            cli(
                url,
                "bob",
                "--output",
                "json",
                *request_args(pubkey_path, role="db-schema-admin", duration="1h"),
            )
        )
    )


def test_console_script_is_installed() -> None:
    """The console script the exit-code tests rely on exists next to the interpreter."""
    assert KEYTURN.is_file()
    assert os.access(KEYTURN, os.X_OK)


def test_request_writes_certificate_next_to_key(live_server: str, pubkey_path: Path) -> None:
    """An auto-approved request prints JSON (approved) and writes id_ed25519-cert.pub."""
    out = succeeded(cli(live_server, "alice", "--output", "json", *request_args(pubkey_path)))
    data = json.loads(out)
    assert data["status"] == "approved"
    assert data["decision"]["rule"] == "standard-auto-approve"
    cert_path = pubkey_path.with_name("id_ed25519-cert.pub")
    assert cert_path.is_file()
    cert = cert_path.read_text()
    assert cert.startswith(CERT_PREFIX)
    assert cert.strip() == data["grant"]["credentials"]["ssh_certificate"]
    assert cert_path.stat().st_mode & 0o777 == 0o644
    listed = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(cert_path)], capture_output=True, text=True, check=True
    )
    assert "server-admin@db-1" in listed.stdout


def test_table_output_names_the_request_and_certificate(
    live_server: str, pubkey_path: Path
) -> None:
    """The default table output shows the request id, the decision and where the cert went."""
    out = succeeded(cli(live_server, "alice", *request_args(pubkey_path)))
    assert "approved" in out
    assert "standard-auto-approve" in out
    assert "id_ed25519-cert.pub" in out.replace("\n", "")
    assert re.search(r"req_[0-9a-f]+", out)


def test_requests_lists_the_new_request(live_server: str, pubkey_path: Path) -> None:
    """``requests --output json`` lists the request just made, with its status."""
    made = json.loads(
        succeeded(cli(live_server, "alice", "--output", "json", *request_args(pubkey_path)))
    )
    listed = json.loads(succeeded(cli(live_server, "alice", "--output", "json", "requests")))
    assert [(r["id"], r["status"]) for r in listed["items"]] == [(made["id"], "approved")]
    assert json.loads(succeeded(cli(live_server, "carol", "--output", "json", "requests"))) == {
        "items": []
    }


def test_review_flow_and_certificate_command(
    live_server: str, pubkey_path: Path, tmp_path: Path
) -> None:
    """Bob's pending request is approved by carol via the CLI; `certificate` fetches the cert."""
    made = pending_request_as_bob(live_server, pubkey_path)
    assert made["status"] == "pending"
    assert not pubkey_path.with_name("id_ed25519-cert.pub").exists()
    approved = json.loads(
        succeeded(cli(live_server, "carol", "--output", "json", "approve", made["id"], "-m", "ok"))
    )
    assert approved["status"] == "approved"
    succeeded(cli(live_server, "bob", "certificate", made["id"], "--ssh-key", str(pubkey_path)))
    assert pubkey_path.with_name("id_ed25519-cert.pub").read_text().startswith(CERT_PREFIX)


def test_cli_closes_its_http_client(live_server: str, tracked_clients: list[Client]) -> None:
    """After a command returns, the API client it opened is closed (no leaked socket)."""
    result = CliRunner().invoke(app, ["--url", live_server, "--token", TOKENS["alice"], "whoami"])
    assert result.exit_code == 0, result.output
    assert len(tracked_clients) == 1
    assert tracked_clients[0]._http.is_closed


def test_whoami_shows_the_user_id(live_server: str) -> None:
    """``whoami`` names the token's user (table and JSON)."""
    assert succeeded(cli(live_server, "alice", "whoami")).startswith("alice (Alice Martin)")
    data = json.loads(succeeded(cli(live_server, "sam", "--output", "json", "whoami")))
    assert (data["id"], data["admin"]) == ("sam", True)


def test_audit_verify_exits_zero(live_server: str, pubkey_path: Path) -> None:
    """``audit verify`` reports an intact chain after some activity and exits 0."""
    succeeded(cli(live_server, "alice", *request_args(pubkey_path)))
    out = succeeded(cli(live_server, "sam", "audit", "verify"))
    assert "audit chain ok" in out
    proc = run("audit", "verify", url=live_server, user="sam")
    assert proc.returncode == 0, proc.stderr
    assert "audit chain ok" in proc.stdout


def test_release_via_cli_revokes(live_server: str, pubkey_path: Path) -> None:
    """``release`` ends the caller's grant and exits 0 with the grant revoked."""
    made = json.loads(
        succeeded(cli(live_server, "alice", "--output", "json", *request_args(pubkey_path)))
    )
    out = succeeded(cli(live_server, "alice", "--output", "json", "release", made["grant"]["id"]))
    ended = json.loads(out)
    assert (ended["status"], ended["end_reason"]) == ("revoked", "released")


# --- exit codes (console script, subprocess) --------------------------------------------------


def test_denied_request_exits_7(live_server: str, pubkey_path: Path) -> None:
    """Mallory is not eligible: the request is filed as denied and the CLI exits 7."""
    proc = run("--output", "json", *request_args(pubkey_path), url=live_server, user="mallory")
    assert proc.returncode == 7, proc.stderr
    assert json.loads(proc.stdout)["status"] == "denied"
    assert not pubkey_path.with_name("id_ed25519-cert.pub").exists()


def test_self_approval_exits_4(live_server: str, pubkey_path: Path) -> None:
    """Bob approving his own request exits 4 (forbidden) and the request stays pending."""
    made = pending_request_as_bob(live_server, pubkey_path)
    proc = run("approve", made["id"], url=live_server, user="bob")
    assert proc.returncode == 4, (proc.stdout, proc.stderr)
    assert "own" in proc.stderr
    shown = json.loads(
        succeeded(cli(live_server, "bob", "--output", "json", "requests", "show", made["id"]))
    )
    assert (shown["status"], shown["reviews"]) == ("pending", [])


def test_conflict_exits_6(live_server: str, pubkey_path: Path) -> None:
    """Carol approving an already approved request exits 6 (conflict)."""
    made = pending_request_as_bob(live_server, pubkey_path)
    succeeded(cli(live_server, "carol", "approve", made["id"]))
    proc = run("approve", made["id"], url=live_server, user="carol")
    assert proc.returncode == 6, (proc.stdout, proc.stderr)


def test_unknown_token_exits_3(live_server: str) -> None:
    """A token that matches no user exits 3 (not authenticated)."""
    proc = run("whoami", url=live_server, token="kt_not-a-real-token")
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "unknown token" in proc.stderr


def test_missing_token_exits_3(live_server: str) -> None:
    """No token at all exits 3 as well."""
    proc = run("requests", url=live_server)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)


def test_unreachable_server_exits_9() -> None:
    """A URL where nothing listens (a free loopback port) exits 9 and says it cannot reach it."""
    url = f"http://127.0.0.1:{lab.free_port()}"
    proc = run("whoami", url=url, user="alice")
    assert proc.returncode == 9, (proc.stdout, proc.stderr)
    assert "cannot reach" in proc.stderr


def test_bad_duration_exits_2(live_server: str, pubkey_path: Path) -> None:
    """``--for abc`` exits 2 before anything is sent; no request is filed."""
    proc = run(*request_args(pubkey_path, duration="abc"), url=live_server, user="alice")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "abc" in proc.stderr
    with httpx.Client(base_url=live_server) as client:
        response = client.get("/v1/requests", headers={"Authorization": f"Bearer {TOKENS['sam']}"})
    assert response.json()["items"] == []


def test_duration_above_maximum_exits_2(live_server: str, pubkey_path: Path) -> None:
    """``--for 5h`` on server-admin (max 4h) is refused by the server: exit 2, the max named."""
    proc = run(*request_args(pubkey_path, duration="5h"), url=live_server, user="alice")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "maximum" in proc.stderr


def test_config_check_accepts_the_example() -> None:
    """``config check examples/keyturn.yaml`` exits 0 and summarises the file."""
    proc = run("config", "check", str(EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    assert ": ok (7 users, 3 targets, 5 roles, 4 rules" in proc.stdout


def test_config_check_names_the_unknown_key(tmp_path: Path) -> None:
    """A config with an unknown key exits 10 and names the key's path on stderr."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["server"]["colour"] = "blue"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    proc = run("config", "check", str(bad))
    assert proc.returncode == 10, (proc.stdout, proc.stderr)
    assert "server.colour" in proc.stderr
    assert proc.stdout == ""


def test_config_schema_prints_json_schema() -> None:
    """``config schema`` prints a JSON Schema object with properties."""
    out = succeeded(CliRunner().invoke(app, ["config", "schema"]))
    schema = json.loads(out)
    assert "properties" in schema
    assert {"users", "roles", "policy"} <= set(schema["properties"])


def test_token_new_prints_token_and_its_digest() -> None:
    """``token new`` prints a fresh token and a token_sha256 line that is its SHA-256."""
    out = succeeded(CliRunner().invoke(app, ["token", "new", "--user", "alice"]))
    token_match = re.search(r"^\s+(kt_[A-Za-z0-9_-]{40,})\s*$", out, re.MULTILINE)
    digest_match = re.search(r"^\s+token_sha256: ([0-9a-f]{64})\s*$", out, re.MULTILINE)
    assert token_match, out
    assert digest_match, out
    token = token_match.group(1)
    assert hashlib.sha256(token.encode()).hexdigest() == digest_match.group(1)
    again = succeeded(CliRunner().invoke(app, ["token", "new", "--user", "alice"]))
    assert token not in again
