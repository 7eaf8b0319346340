"""The real ``keyturn serve``: starts and answers, or refuses to start with a clear error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from keyturn.lab import free_port
from tests.conftest import TOKENS, example_data

KEYTURN = str(Path(sys.executable).parent / "keyturn")


def _write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "keyturn.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_serve_starts_answers_and_audits_its_start(tmp_path: Path) -> None:
    """serve listens, creates the CA 0600, and records server.started and config.loaded."""
    port = free_port()
    data = example_data(tmp_path)
    data["server"]["port"] = port
    config = _write_config(tmp_path, data)
    proc = subprocess.Popen([KEYTURN, "serve", "--config", str(config)], stderr=subprocess.PIPE)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(200):
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            headers = {"Authorization": f"Bearer {TOKENS['sam']}"}
            events = http.get("/v1/audit", headers=headers).json()["items"]
        assert [e["action"] for e in events[:2]] == ["server.started", "config.loaded"]
        assert len(events[1]["details"]["sha256"]) == 64
        ca_key = Path(data["ssh_ca"]["key_path"])
        assert ca_key.stat().st_mode & 0o777 == 0o600
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert proc.stderr is not None
        proc.stderr.close()


def _refused(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KEYTURN, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_refuses_a_world_readable_ca_key(tmp_path: Path) -> None:
    """A CA key readable by others stops the server at start (exit 10), naming the key."""
    data = example_data(tmp_path)
    key = Path(data["ssh_ca"]["key_path"])
    key.parent.mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    os.chmod(key, 0o644)
    result = _refused(_write_config(tmp_path, data))
    assert result.returncode == 10
    assert "ssh_ca.key_path" in result.stderr
    assert "chmod 600" in result.stderr


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda d: d["policy"]["rules"][0].update(when="role.tier =="), "policy.rules[0].when"),
        (lambda d: d["roles"][0].update(tier=7), "roles[0].tier"),
        (lambda d: d.update(colour="blue"), "colour"),
    ],
)
def test_serve_refuses_an_invalid_config_naming_the_key(
    tmp_path: Path, change: Any, path: str
) -> None:
    """Bad CEL, a wrong type or an unknown key: startup refused (exit 10), key path named."""
    data = example_data(tmp_path)
    change(data)
    result = _refused(_write_config(tmp_path, data))
    assert result.returncode == 10
    assert path in result.stderr
    assert not Path(data["ssh_ca"]["key_path"]).exists()
