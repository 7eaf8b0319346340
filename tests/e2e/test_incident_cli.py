"""The incident commands of the ``keyturn`` CLI: ``policy explain``, ``policy test``,
``report always-on``, ``alerts``, ``request --start``, ``config reload``, and ``serve``
reloading its configuration on ``SIGHUP``.

Successful client commands run in-process (``CliRunner``) against a live server started from a
configuration *file* (so reloads have something to re-read). Exit codes of errors are mapped by
``keyturn.entrypoints.cli.main``, so those run the installed console script.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from keyturn import bootstrap, lab
from keyturn.config import load_config
from keyturn.entrypoints.cli import app
from keyturn.entrypoints.server import Server
from tests.conftest import EXAMPLE, TOKENS, example_data
from tests.e2e.conftest import cli, succeeded

pytestmark = pytest.mark.usefixtures("isolated_settings")

KEYTURN = str(Path(sys.executable).parent / "keyturn")
CASES = EXAMPLE.parent / "policy-tests.yaml"
HOOK_TOKEN = "cli-hook-token-81f3"
NEW_USER, NEW_TOKEN = "zoe", "test-token-zoe"
DEADLINE = 20.0  # seconds to wait for a server to start or to apply a signal


def incident_data(tmp_path: Path) -> dict[str, Any]:
    """The example configuration with the webhook bearer token set."""
    data = example_data(tmp_path)
    data["alerts"]["bearer_token_sha256"] = hashlib.sha256(HOOK_TOKEN.encode()).hexdigest()
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as YAML to ``path``; returns it."""
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass(frozen=True)
class Live:
    """A live server started from ``config`` (a file), at ``url``."""

    url: str
    config: Path


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """The real app from ``tmp_path/keyturn.yaml``, API and worker on a free loopback port."""
    config = write_config(tmp_path / "keyturn.yaml", incident_data(tmp_path))
    wired = bootstrap.build(load_config(config))
    port = lab.free_port()
    server = Server(wired, "127.0.0.1", port)
    server.start()
    try:
        yield Live(f"http://127.0.0.1:{port}", config)
    finally:
        server.stop()
        wired.close()


def run(*args: str, url: str | None = None, user: str | None = None) -> Any:
    """Run the installed ``keyturn`` console script; URL and token go through the environment."""
    env = dict(os.environ, COLUMNS="250")  # messages unwrapped, so they can be matched
    if url is not None:
        env["KEYTURN_URL"] = url
    if user is not None:
        env["KEYTURN_TOKEN"] = TOKENS[user]
    return subprocess.run(
        [KEYTURN, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def fire(url: str, instance: str = "db-1:9187", status: str = "firing") -> None:
    """Send one PostgresPrimaryDown alert through the generic webhook."""
    item = {"name": "PostgresPrimaryDown", "status": status, "severity": "critical"}
    body = {"alerts": [{**item, "labels": {"instance": instance}}]}
    response = httpx.post(
        f"{url}/v1/webhooks/alerts",
        json=body,
        headers={"Authorization": f"Bearer {HOOK_TOKEN}"},
        trust_env=False,
    )
    assert response.status_code == 200, response.text


# --- policy explain ---------------------------------------------------------------------------


def test_policy_explain_table_lists_every_rule_and_the_decision(live: Live) -> None:
    fire(live.url)
    out = succeeded(cli(live.url, "alice", "policy", "explain", "--role", "db-admin", "-t", "db-1"))
    rules = [r["name"] for r in yaml.safe_load(live.config.read_text())["policy"]["rules"]]
    for rule in rules[:2]:  # evaluation stops at the first match: oncall-incident
        assert rule in out
    assert "MATCHED  oncall-incident" in out
    assert "on call    True (schedules: database)" in out
    assert "target     db-1 alerting True PostgresPrimaryDown[critical]" in out
    assert "decision   auto_approve by rule oncall-incident" in out


def test_policy_explain_without_an_alert_shows_every_rule_tried(live: Live) -> None:
    out = succeeded(
        cli(
            live.url,
            "sam",
            "policy",
            "explain",
            "-r",
            "db-admin",
            "-t",
            "db-2",
            "--requester",
            "dave",
        )
    )
    for rule in ("standard-auto-approve", "oncall-incident", "db-admin-two-reviews"):
        assert rule in out
    assert "requester  dave" in out
    assert "decision   require_approval by rule db-admin-two-reviews" in out


def test_policy_explain_json_parses(live: Live) -> None:
    out = succeeded(
        cli(live.url, "alice", "-o", "json", "policy", "explain", "-r", "db-admin", "-t", "db-1")
    )
    data = json.loads(out)
    assert (data["outcome"], data["rule"]) == ("require_approval", "db-admin-two-reviews")
    assert data["facts"]["requester"]["on_call"] is True
    assert data["facts"]["target"]["alerting"] is False


def test_policy_explain_for_another_user_needs_admin(live: Live) -> None:
    proc = run("policy", "explain", "-r", "db-admin", "-t", "db-1", "--requester", "alice",
               url=live.url, user="dave")  # fmt: skip
    assert proc.returncode == 4, proc.stderr
    assert "only admins" in proc.stderr


# --- policy test (offline) --------------------------------------------------------------------


def _copy_cases(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """The example cases (and the on-call file they name) in ``tmp_path``, changed."""
    shutil.copytree(EXAMPLE.parent / "oncall", tmp_path / "oncall")
    data = yaml.safe_load(CASES.read_text())
    change(data)
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_policy_test_passes_on_the_example(tmp_path: Path) -> None:
    proc = run("policy", "test", str(CASES), "-c", str(EXAMPLE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    count = len(yaml.safe_load(CASES.read_text())["cases"])
    assert f"{count} passed, 0 failed" in proc.stdout
    assert "FAIL" not in proc.stdout


def test_policy_test_exits_1_naming_the_case_whose_expectation_differs(tmp_path: Path) -> None:
    def expect_auto_approve(data: dict[str, Any]) -> None:
        data["cases"][1]["expect"] = {"outcome": "auto_approve", "rule": "oncall-incident"}

    cases = _copy_cases(tmp_path, expect_auto_approve)
    name = yaml.safe_load(cases.read_text())["cases"][1]["name"]
    proc = run("policy", "test", str(cases), "-c", str(EXAMPLE))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [failed] = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert name in failed
    assert "1 failed" in proc.stdout

    result = CliRunner().invoke(
        app, ["-o", "json", "policy", "test", str(cases), "-c", str(EXAMPLE)]
    )
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert [c["name"] for c in report["cases"] if not c["passed"]] == [name]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("cases: [unclosed\n", "not valid YAML"),
        ("cases:\n  - name: no request\n    expect: {outcome: deny}\n", "request"),
        ("cases: []\n", "cases"),
    ],
    ids=["yaml-syntax", "missing-request", "no-cases"],
)
def test_policy_test_exits_10_on_a_malformed_cases_file(
    tmp_path: Path, content: str, says: str
) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(content)
    proc = run("policy", "test", str(cases), "-c", str(EXAMPLE))
    assert proc.returncode == 10, proc.stdout + proc.stderr
    assert str(cases) in proc.stderr
    assert says in proc.stderr


# --- reports, alerts, scheduled requests, reload -----------------------------------------------


def test_report_always_on_for_the_admin_and_refused_to_others(live: Live) -> None:
    out = succeeded(cli(live.url, "sam", "report", "always-on"))
    assert "working hours 09:00-17:00 on days [1, 2, 3, 4, 5] (UTC), window P14D" in out
    data = json.loads(succeeded(cli(live.url, "sam", "-o", "json", "report", "always-on")))
    assert data["definition"]["threshold"] == 0.5
    assert run("report", "always-on", url=live.url, user="alice").returncode == 4


def test_alerts_lists_firing_alerts_with_their_targets(live: Live) -> None:
    fire(live.url, "db-1:9187")
    fire(live.url, "db-2:9187")
    fire(live.url, "db-2:9187", status="resolved")
    out = succeeded(cli(live.url, "alice", "alerts"))
    assert "PostgresPrimaryDown" in out
    assert "db-1" in out
    assert "db-2" not in out
    assert "resolved" not in out
    everything = succeeded(cli(live.url, "alice", "alerts", "--resolved", "--target", "db-2"))
    assert "resolved" in everything
    assert "db-1" not in everything
    data = json.loads(succeeded(cli(live.url, "alice", "-o", "json", "alerts", "--resolved")))
    assert sorted((a["targets"][0], a["status"]) for a in data["items"]) == [
        ("db-1", "firing"),
        ("db-2", "resolved"),
    ]


def test_request_start_in_2h_is_scheduled(live: Live, pubkey_path: Path) -> None:
    before = datetime.now(UTC)
    args = ["request", "server-admin", "-t", "db-1", "-j", "window", "--ssh-key", str(pubkey_path)]
    out = succeeded(cli(live.url, "alice", "-o", "json", *args, "--start", "in 2h"))
    data = json.loads(out)
    assert data["status"] == "scheduled"
    start = datetime.fromisoformat(data["start_at"])
    assert before + timedelta(hours=2) <= start <= datetime.now(UTC) + timedelta(hours=2)
    shown = succeeded(cli(live.url, "alice", "requests", "show", data["id"]))
    assert f"starts     {data['start_at']}" in shown
    assert "decision   auto_approve by rule standard-auto-approve" in shown
    assert "MATCHED  standard-auto-approve" in shown


def test_request_start_in_the_past_exits_2(live: Live, pubkey_path: Path) -> None:
    proc = run(
        "request", "server-admin", "-t", "db-1", "-j", "x", "--ssh-key", str(pubkey_path),
        "--start", "2020-01-01T00:00:00Z", url=live.url, user="alice",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "start is not in the future" in proc.stderr


def test_config_reload_applies_and_refuses(live: Live) -> None:
    data = yaml.safe_load(live.config.read_text())
    data["targets"].append({"name": "db-3", "labels": {"env": "prod", "service": "postgres"}})
    write_config(live.config, data)
    assert succeeded(cli(live.url, "sam", "config", "reload")).startswith("reloaded: ")
    explain_db3 = ["-o", "json", "policy", "explain", "-r", "server-admin", "-t", "db-3"]
    assert json.loads(succeeded(cli(live.url, "alice", *explain_db3)))["outcome"] == "auto_approve"

    live.config.write_text("users: [unclosed\n")
    result = cli(live.url, "sam", "config", "reload")
    assert result.exit_code == 1
    assert result.stdout.startswith("refused: ")
    assert "(the old configuration stays)" in result.stdout
    assert json.loads(succeeded(cli(live.url, "alice", *explain_db3)))["outcome"] == "auto_approve"
    assert run("config", "reload", url=live.url, user="alice").returncode == 4


# --- serve and SIGHUP -------------------------------------------------------------------------


class ServeProcess:
    """A real ``keyturn serve`` subprocess with its log in a file."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            [KEYTURN, "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )
        self.http = httpx.Client(base_url=self.url, trust_env=False, timeout=5.0)

    def wait_until(self, check: Callable[[], bool], what: str) -> None:
        """Poll ``check`` until it is true; fail after :data:`DEADLINE` s with the log."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"keyturn serve exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                if check():
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        pytest.fail(f"not within {DEADLINE}s: {what}; log: {self.log.read_text()}")

    def get(self, path: str, token: str) -> httpx.Response:
        """GET ``path`` with a bearer token."""
        return self.http.get(path, headers={"Authorization": f"Bearer {token}"})

    def audit_actions(self) -> list[tuple[str, str]]:
        """(actor, action) of every audit event, as sam sees them."""
        items = self.get("/v1/audit?limit=10000", TOKENS["sam"]).json()["items"]
        return [(e["actor"], e["action"]) for e in items]

    def stop(self) -> None:
        """SIGTERM, wait, close the client and the log."""
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        finally:
            self._log_file.close()


def test_serve_reloads_on_sighup_and_refuses_a_broken_file(tmp_path: Path) -> None:
    port = lab.free_port()
    data = incident_data(tmp_path)
    data["server"]["port"] = port
    config = write_config(tmp_path / "keyturn.yaml", data)
    served = ServeProcess(config, port, tmp_path / "serve.log")
    try:
        served.wait_until(lambda: served.http.get("/healthz").status_code == 200, "healthz")
        assert served.get("/v1/whoami", NEW_TOKEN).status_code == 401

        digest = hashlib.sha256(NEW_TOKEN.encode()).hexdigest()
        data["users"].append({"id": NEW_USER, "name": "Zoe", "groups": ["sre"]})
        data["users"][-1]["token_sha256"] = digest
        write_config(config, data)
        served.proc.send_signal(signal.SIGHUP)
        served.wait_until(
            lambda: served.get("/v1/whoami", NEW_TOKEN).status_code == 200, "zoe after SIGHUP"
        )
        assert ("system:sighup", "config.reloaded") in served.audit_actions()

        config.write_text("users: [unclosed\n")
        served.proc.send_signal(signal.SIGHUP)
        served.wait_until(
            lambda: ("system:sighup", "config.reload_refused") in served.audit_actions(),
            "config.reload_refused after SIGHUP",
        )
        assert served.get("/v1/whoami", NEW_TOKEN).json()["id"] == NEW_USER  # old config kept
        assert served.http.get("/readyz").status_code == 200
        assert served.proc.poll() is None
    finally:
        served.stop()
    assert "configuration reload refused" in served.log.read_text()
