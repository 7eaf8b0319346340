"""The recording SSH gateway with the real OpenSSH client in front and real sshd behind it."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from keyturn import bootstrap
from keyturn.adapters.providers.ssh_ca import (
    CertificateSpec,
    build_certificate,
    gateway_key_id,
    key_id,
    load_or_create_ca,
)
from keyturn.adapters.recording import RecordingWriter
from keyturn.domain.ssh_keys import parse_user_public_key
from keyturn.domain.terminal import neutralize
from keyturn.entrypoints.cli_gateway import render_ssh_config
from keyturn.lab import free_port, ssh_login
from keyturn.service import audit_log, grants
from tests.integration.gateway_lab import GatewayLab, gateway_lab

pytestmark = pytest.mark.integration
CUT_DEADLINE = timedelta(seconds=2)  # the promise: sessions end within 2 s


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[GatewayLab]:
    with gateway_lab(tmp_path) as running:
        yield running


def cast_events(lab: GatewayLab, session_id: str) -> tuple[dict[str, Any], list[list[Any]]]:
    lines = (lab.recordings / f"{session_id}.cast").read_text().splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def output_of(events: list[list[Any]]) -> str:
    return "".join(e[2] for e in events if e[1] == "o")


def only(lab: GatewayLab, action: str) -> Any:
    found = lab.events(action)
    assert len(found) == 1, found
    return found[0]


def wait_until(what: str, check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def at(event: Any) -> datetime:
    moment: datetime = event.at
    return moment


# --- what works --------------------------------------------------------------------------------
def test_exec_relays_stdout_stderr_and_exit_status_and_records_them(lab: GatewayLab) -> None:
    view = lab.grant()
    result = lab.ssh("db-1", "echo hello; echo oops >&2; exit 3")
    assert result.returncode == 3, result.stderr
    assert result.stdout == "hello\n"
    assert "oops" in result.stderr
    started = only(lab, "session.started")
    ended = only(lab, "session.ended")
    session_id = started.subject["session_id"]
    assert view.grant is not None
    assert started.subject["grant_id"] == view.grant.id
    assert started.details["command"] == "echo hello; echo oops >&2; exit 3"
    assert ended.details["exit_status"] == 3
    assert ended.details["reason"] == "closed"
    header, events = cast_events(lab, session_id)
    assert header["version"] == 2
    assert header["keyturn"]["grant_id"] == started.subject["grant_id"]
    assert header["keyturn"]["user_id"] == "alice"
    assert header["keyturn"]["target"] == "db-1"
    assert "hello\n" in output_of(events)
    assert "oops\n" in output_of(events)
    assert audit_log.verify(lab.app.deps).ok


def test_pty_shell_is_relayed_recorded_and_its_commands_logged(lab: GatewayLab) -> None:
    lab.grant()
    script = "echo marker-$((6*7))\nexit 5\n"
    result = lab.ssh("db-1", None, "-tt", stdin=script)
    assert result.returncode == 5, result.stderr
    assert "marker-42" in result.stdout
    session_id = only(lab, "session.started").subject["session_id"]
    header, events = cast_events(lab, session_id)
    assert header["keyturn"]["kind"] == "shell"
    assert "marker-42" in output_of(events)
    assert not [e for e in events if e[1] == "i"], "input is not recorded by default"
    commands = [e.details for e in lab.events("session.command")]
    assert {"command": "echo marker-$((6*7))", "best_effort": True} in commands
    assert only(lab, "session.ended").details["exit_status"] == 5


def test_changed_or_deleted_recording_fails_audit_verify(lab: GatewayLab) -> None:
    lab.grant()
    assert lab.ssh("db-1", "echo evidence").returncode == 0
    ended = only(lab, "session.ended")
    path = lab.recordings / ended.details["recording"]
    assert audit_log.verify(lab.app.deps).ok
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    result = audit_log.verify(lab.app.deps)
    assert not result.ok
    assert result.first_bad_seq == ended.seq
    assert ended.subject["session_id"] in (result.reason or "")
    path.unlink()
    assert "missing" in (audit_log.verify(lab.app.deps).reason or "")


# --- who gets in --------------------------------------------------------------------------------
def test_no_grant_is_refused(lab: GatewayLab) -> None:
    result = lab.ssh("db-1", "true", cert=Path("/dev/null"))
    assert result.returncode == 255
    assert "Permission denied" in result.stderr
    assert not lab.events("session.started")


def test_a_grant_for_db1_does_not_open_db2(lab: GatewayLab) -> None:
    lab.grant(target="db-1")
    result = lab.ssh("db-2", "true")
    assert result.returncode == 255
    refused = only(lab, "session.refused")
    assert refused.details["reason"] == "other_target"
    assert refused.subject["user_id"] == "alice"
    assert not lab.events("session.started")


def test_a_revoked_certificate_is_refused(lab: GatewayLab) -> None:
    view = lab.grant()
    assert view.grant is not None
    admin = lab.app.deps.config.user("sam")
    assert admin is not None
    grants.revoke(lab.app.deps, admin, view.grant.id)
    assert lab.ssh("db-1", "true").returncode == 255
    assert only(lab, "session.refused").details["reason"] == "grant_inactive"


def _sign(
    lab: GatewayLab, ca: ed25519.Ed25519PrivateKey, key_id_text: str, serial: int, path: Path
) -> Path:
    public = parse_user_public_key(lab.key.with_name("id_ed25519.pub").read_text())
    role = lab.app.deps.config.role("server-admin")
    assert role is not None
    now = lab.app.deps.clock.now()
    spec = CertificateSpec(
        serial=serial,
        key_id=key_id_text,
        principals=["server-admin@db-1"],
        valid_after=now - timedelta(minutes=1),
        valid_before=now + timedelta(minutes=10),
        options=role.ssh,
    )
    path.write_text(build_certificate(ca, public, spec) + "\n")
    return path


def test_a_certificate_from_another_ca_is_refused(lab: GatewayLab, tmp_path: Path) -> None:
    view = lab.grant()
    assert view.grant is not None
    assert view.grant.serial is not None
    other_ca = ed25519.Ed25519PrivateKey.generate()
    forged = _sign(lab, other_ca, key_id(view.grant), view.grant.serial, tmp_path / "f-cert.pub")
    assert lab.ssh("db-1", "true", cert=forged).returncode == 255
    assert not lab.events("session.started")


def test_a_certificate_with_the_gateways_own_key_id_is_refused(
    lab: GatewayLab, tmp_path: Path
) -> None:
    view = lab.grant()
    assert view.grant is not None
    assert view.grant.serial is not None
    ca = load_or_create_ca(lab.app.deps.config.ssh_ca.key_path)
    upstream_id = gateway_key_id(view.grant, "con_0123")
    cert = _sign(lab, ca, upstream_id, view.grant.serial, tmp_path / "g-cert.pub")
    assert lab.ssh("db-1", "true", cert=cert).returncode == 255
    assert not lab.events("session.started")


@pytest.mark.parametrize("user_name", ["db-1;id", "../etc", "db-1$(id)", "db-1 x", "db-9", "-oX"])
def test_hostile_or_unknown_target_names_are_refused(lab: GatewayLab, user_name: str) -> None:
    lab.grant()
    args = lab.ssh_args("db-1")
    args[args.index("db-1@127.0.0.1")] = "127.0.0.1"
    result = subprocess.run(
        [*args, "-l", user_name, "true"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 255
    assert not lab.events("session.started")


# --- what is refused inside a connection -------------------------------------------------------
def test_port_forwarding_w_is_refused_and_audited(lab: GatewayLab) -> None:
    lab.grant()
    result = lab.ssh("db-1", None, "-W", f"127.0.0.1:{lab.db1.port}", timeout=30)
    assert result.returncode != 0
    refused = wait_until("the audit event", lambda: lab.events("session.refused"))
    assert refused[0].details["reason"] == "port_forwarding"
    assert refused[0].details["dest_port"] == lab.db1.port


def test_port_forwarding_l_is_refused_and_audited(lab: GatewayLab) -> None:
    lab.grant()
    local = free_port()
    args = lab.ssh_args("db-1", "-N", "-L", f"127.0.0.1:{local}:127.0.0.1:{lab.db1.port}")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sock = wait_until("the local listener", lambda: _connect(local))
        sock.settimeout(10)
        assert sock.recv(100) == b"", "the forwarded connection must be closed, not relayed"
        sock.close()
        refused = wait_until("the audit event", lambda: lab.events("session.refused"))
        assert refused[0].details["reason"] == "port_forwarding"
    finally:
        proc.terminate()
        proc.wait(10)


def _connect(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=1)
    except OSError:
        return None


def test_remote_forwarding_is_refused_and_audited(lab: GatewayLab) -> None:
    lab.grant()
    result = lab.ssh("db-1", "true", "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9")
    assert result.returncode == 255
    refused = wait_until("the audit event", lambda: lab.events("session.refused"))
    assert refused[0].details["reason"] == "remote_forwarding"


def test_sftp_is_refused_by_default_and_audited(lab: GatewayLab, tmp_path: Path) -> None:
    lab.grant()
    batch = tmp_path / "batch"
    batch.write_text("ls\n")
    sftp = ["sftp", "-b", str(batch), *lab.ssh_args("db-1")[1:]]
    sftp[sftp.index("-p")] = "-P"
    result = subprocess.run(sftp, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0, result.stderr
    refused = wait_until("the audit event", lambda: lab.events("session.refused"))
    assert refused[0].details["reason"] == "file_transfer"
    assert not lab.events("session.started")


# --- the grant ends, the session ends -----------------------------------------------------------
def _interactive(lab: GatewayLab) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        lab.ssh_args("db-1", "-tt"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(b"echo inside-$((1+1))\n")
    proc.stdin.flush()
    wait_until("the session to start", lambda: lab.events("session.started"))
    return proc


def test_open_session_is_cut_within_2s_of_expiry(lab: GatewayLab) -> None:
    view = lab.grant(seconds=3)
    assert view.grant is not None
    proc = _interactive(lab)
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    ended = only(lab, "session.ended")
    assert ended.details["reason"] == "grant_ended"
    assert at(ended) - view.grant.not_after <= CUT_DEADLINE
    assert b"inside-2" in out
    assert b"expired" in out + err
    assert proc.returncode != 0


def test_open_session_is_cut_within_2s_of_a_revoke_on_another_instance(lab: GatewayLab) -> None:
    view = lab.grant()
    assert view.grant is not None
    proc = _interactive(lab)
    other = bootstrap.build(lab.app.loaded)  # a second broker instance on the same store
    try:
        admin = other.deps.config.user("sam")
        assert admin is not None
        revoked = grants.revoke(other.deps, admin, view.grant.id)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        other.close()
    ended = only(lab, "session.ended")
    assert ended.details["reason"] == "grant_ended"
    assert revoked.ended_at is not None
    assert at(ended) - revoked.ended_at <= CUT_DEADLINE
    assert b"revoked" in out + err


# --- fail closed and bounded --------------------------------------------------------------------
def test_a_session_that_cannot_be_recorded_is_refused(lab: GatewayLab) -> None:
    lab.grant()
    lab.recordings.rmdir()
    lab.recordings.write_text("not a directory")  # unwritable even for root
    result = lab.ssh("db-1", "echo should-not-run")
    assert result.returncode != 0
    assert "should-not-run" not in result.stdout
    assert "cannot be recorded" in result.stderr
    assert only(lab, "session.refused").details["reason"] == "recording_unavailable"
    assert not lab.events("session.started")


def test_terminal_escapes_are_recorded_faithfully_and_neutralised_on_playback(
    lab: GatewayLab,
) -> None:
    lab.grant()
    hostile = r"printf '\033]0;pwned\007\033]52;c;ZXZpbA==\007\033[31mred\033[0m'"
    assert lab.ssh("db-1", hostile).returncode == 0
    session_id = only(lab, "session.started").subject["session_id"]
    recorded = output_of(cast_events(lab, session_id)[1])
    assert recorded == "\x1b]0;pwned\x07\x1b]52;c;ZXZpbA==\x07\x1b[31mred\x1b[0m"
    assert neutralize(recorded) == "\x1b[31mred\x1b[0m"


def _client_connect(lab: GatewayLab) -> Any:
    key = asyncssh.read_private_key(str(lab.key))
    cert = asyncssh.read_certificate(str(lab.cert))
    return asyncssh.connect(
        "127.0.0.1",
        lab.port,
        username="db-1",
        client_keys=[(key, cert)],
        known_hosts=str(lab.known_hosts),
        agent_path=None,
        config=[],
    )


def test_a_hundred_channels_at_once_are_bounded(lab: GatewayLab) -> None:
    lab.grant()
    limit = lab.app.deps.config.gateway.max_channels_per_connection

    async def flood() -> tuple[int, int]:
        async with _client_connect(lab) as conn:

            async def one() -> bool:
                try:
                    result = await conn.run("sleep 1; echo ok", check=False)
                except asyncssh.ChannelOpenError:
                    return False
                return result.stdout == "ok\n"

            results = await asyncio.gather(*(one() for _ in range(100)))
        return sum(results), len(results) - sum(results)

    ok, refused = asyncio.run(flood())
    assert 1 <= ok <= limit
    assert refused == 100 - ok
    assert lab.ssh("db-1", "echo still-serving").stdout == "still-serving\n"
    events = wait_until(
        "the refusal event",
        lambda: [e for e in lab.events("session.refused") if e.details["reason"] != "closed"],
    )
    assert events[0].details["reason"] == "too_many_channels"


def test_output_faster_than_the_disk_is_back_pressured(
    lab: GatewayLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow disk (2 ms per recording write) slows the relay; the gateway never holds more
    than a chunk or so of unrecorded output, and every byte still arrives and is recorded."""
    lab.grant()
    stats = lab.gateway.gateway.stats
    slow = RecordingWriter.event

    def event(self: RecordingWriter, code: str, data: str) -> None:
        time.sleep(0.002)
        slow(self, code, data)

    monkeypatch.setattr(RecordingWriter, "event", event)
    size = 8 * 1024 * 1024
    ahead: list[int] = []
    received = 0
    with subprocess.Popen(
        [*lab.ssh_args("db-1"), f"head -c {size} /dev/zero"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(65536):
            received += len(chunk)
            ahead.append(stats.upstream_bytes - stats.recorded_bytes)
        assert proc.wait(30) == 0
    assert received == size
    assert max(ahead) <= 2 * 65536 + 1, max(ahead)
    ended = only(lab, "session.ended")
    assert ended.details["bytes"] > size  # JSON-escaped NULs: every byte is in the recording


def test_the_printed_ssh_config_makes_ssh_target_go_through_the_gateway(
    lab: GatewayLab, tmp_path: Path
) -> None:
    lab.grant()
    config = lab.app.deps.config.model_copy(
        update={"gateway": lab.app.deps.config.gateway.model_copy(update={"port": lab.port})}
    )
    text = render_ssh_config(config, lab.gateway.gateway.host_key_line, str(lab.key))
    known, _, ssh_config = text.partition("# ~/.ssh/config")
    (tmp_path / "kh").write_text(known)
    (tmp_path / "cfg").write_text(ssh_config)
    result = subprocess.run(
        [
            "ssh",
            "-F",
            str(tmp_path / "cfg"),
            "-o",
            f"UserKnownHostsFile={tmp_path / 'kh'}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentityAgent=none",
            "db-1",
            "echo via-config",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "via-config\n"
    assert "corp-directory: no host_key" in text


def test_sftp_is_relayed_with_file_names_and_sizes_when_the_role_records_it(
    tmp_path: Path,
) -> None:
    def record_transfers(data: dict[str, Any]) -> None:
        for role in data["roles"]:
            if role["name"] == "server-admin":
                role["ssh"]["file_transfer"] = "record"

    with gateway_lab(tmp_path / "lab", change=record_transfers) as lab:
        lab.grant()
        upload = tmp_path / "payload.bin"
        upload.write_bytes(b"x" * 100_000)
        remote = tmp_path / "remote-copy.bin"
        back = tmp_path / "back.bin"
        batch = tmp_path / "batch"
        batch.write_text(f"put {upload} {remote}\nget {remote} {back}\nrm {remote}\n")
        sftp = ["sftp", "-b", str(batch), *lab.ssh_args("db-1")[1:]]
        sftp[sftp.index("-p")] = "-P"
        result = subprocess.run(sftp, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert back.read_bytes() == upload.read_bytes()
        files = [e.details for e in lab.events("session.file")]
        closes = [f for f in files if f["op"] == "close" and f["path"] == str(remote)]
        assert [c["bytes_written"] for c in closes if "write" in c["mode"]] == [100_000]
        assert [c["bytes_read"] for c in closes if c["mode"] == "read"] == [100_000]
        assert {"op": "remove", "path": str(remote)} in files
        session_id = only(lab, "session.started").subject["session_id"]
        assert "keyturn sftp: open" in output_of(cast_events(lab, session_id)[1])


def test_a_character_split_between_reads_is_relayed_only_once_recorded(lab: GatewayLab) -> None:
    """The first byte of 'é' arrives a second before the second: the gateway holds it (it could
    not be recorded alone) and relays the whole character once it is in the recording."""
    lab.grant()
    stats = lab.gateway.gateway.stats
    with subprocess.Popen(
        [*lab.ssh_args("db-1"), r"printf '\303'; sleep 1; printf '\251\n'"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdout is not None
        out = proc.stdout.read()
        assert proc.wait(30) == 0
    assert out == "é\n".encode()
    session_id = only(lab, "session.started").subject["session_id"]
    events = [e for e in cast_events(lab, session_id)[1] if e[1] == "o"]
    assert output_of(events) == "é\n"
    assert stats.upstream_bytes == stats.recorded_bytes == 3


def test_an_exec_sessions_input_is_data_not_a_command_log(lab: GatewayLab) -> None:
    """``ssh db-1 cat < secrets`` echoes its input; none of it may become ``session.command``."""
    lab.grant()
    result = lab.ssh("db-1", "cat", stdin="hunter2\nanother secret line\n")
    assert result.stdout == "hunter2\nanother secret line\n"
    assert only(lab, "session.ended").details["exit_status"] == 0
    assert lab.events("session.command") == []


def test_a_copied_certificate_without_its_private_key_writes_nothing_in_its_owners_name(
    lab: GatewayLab,
) -> None:
    """Certificates are public: a client offering alice's certificate but signing with another
    key (for another target, to provoke refusals) is refused without a single audit event."""
    lab.grant()
    pair = asyncssh.load_keypairs([(str(lab.key), str(lab.cert))])[0]
    pair._key = asyncssh.generate_private_key("ssh-ed25519")  # sign with another key

    async def attempt() -> str:
        try:
            async with asyncssh.connect(
                "127.0.0.1",
                lab.port,
                username="db-2",
                client_keys=[pair],
                known_hosts=str(lab.known_hosts),
                agent_path=None,
                config=[],
            ):
                return "logged in"
        except asyncssh.PermissionDenied:
            return "refused"

    assert asyncio.run(attempt()) == "refused"
    assert lab.events("session.refused") == []


def test_a_command_longer_than_the_store_keeps_is_whole_in_the_recording(lab: GatewayLab) -> None:
    lab.grant()
    command = " " * 4100 + "echo HIDDEN"
    result = lab.ssh("db-1", command)
    assert result.stdout == "HIDDEN\n"
    started = only(lab, "session.started")
    assert started.details["command_truncated"] is True
    assert started.details["command_length"] == len(command)
    header, _ = cast_events(lab, started.subject["session_id"])
    assert header["keyturn"]["command"] == command


def test_a_gateway_only_role_opens_the_target_through_the_gateway_alone(tmp_path: Path) -> None:
    """Its certificate's one principal is listed by no sshd: a direct login, or one tunnelled
    to the target's sshd, is refused; through the gateway it works (recorded)."""

    def gateway_only(data: dict[str, Any]) -> None:
        for role in data["roles"]:
            if role["name"] == "server-admin":
                role["ssh"]["gateway_only"] = True

    with gateway_lab(tmp_path / "lab", change=gateway_only) as lab:
        lab.grant()
        assert ssh_login(lab.db1, lab.key, lab.cert, "echo direct").returncode == 255
        assert lab.ssh("db-1", "echo recorded").stdout == "recorded\n"
        assert only(lab, "session.ended").details["exit_status"] == 0
