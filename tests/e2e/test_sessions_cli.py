"""``keyturn sessions list|show|play|export`` against a live server on loopback, with sessions
and real recordings seeded into its store and ``gateway.recordings_dir``.

Successful commands run in-process (``CliRunner``), ``play`` with its sleep replaced by a
recorder so no test waits. Exit codes are mapped by ``keyturn.entrypoints.cli.main``, so the
error cases run the installed console script.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from keyturn.bootstrap import App
from keyturn.domain.sessions import SessionKind
from keyturn.entrypoints import cli_sessions
from tests.conftest import TOKENS
from tests.e2e.conftest import cli, succeeded
from tests.e2e.recorded import HOSTILE_SHOWN, recording_of, seed

pytestmark = pytest.mark.usefixtures("isolated_settings")

KEYTURN = Path(sys.executable).parent / "keyturn"


def run(url: str, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``keyturn`` as ``user`` (URL and token through the environment)."""
    env = {**os.environ, "KEYTURN_URL": url, "KEYTURN_TOKEN": TOKENS[user]}
    return subprocess.run(
        [str(KEYTURN), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def said(proc: subprocess.CompletedProcess[str]) -> str:
    """Standard error with its line wrapping undone (the error console wraps long lines)."""
    return " ".join(proc.stderr.split())


def as_json(url: str, user: str, *args: str) -> Any:
    return json.loads(succeeded(cli(url, user, "--output", "json", *args)))


def raw_stdout(result: Any) -> str:
    """What a successful in-process run wrote, exactly (``stdout`` turns CRLF into LF)."""
    succeeded(result)
    out: str = result.stdout_bytes.decode()
    return out


def ids(data: dict[str, Any]) -> list[str]:
    return [s["id"] for s in data["items"]]


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait ``play`` asks for, in seconds (none is actually waited)."""
    waits: list[float] = []
    monkeypatch.setattr(cli_sessions, "sleep", waits.append)
    return waits


# --- list and show -----------------------------------------------------------------------------
def test_list_shows_the_admin_everything_and_a_user_their_own(live_server: str, wired: App) -> None:
    """sam lists both sessions, alice hers, carol none (even naming alice)."""
    alices = seed(wired, user="alice")
    bobs = seed(wired, user="bob")
    assert ids(as_json(live_server, "sam", "sessions", "list")) == [bobs.id, alices.id]
    assert ids(as_json(live_server, "alice", "sessions", "list")) == [alices.id]
    assert ids(as_json(live_server, "carol", "sessions", "list", "--user", "alice")) == []


def test_list_filters_by_grant_user_and_limit(live_server: str, wired: App) -> None:
    """--grant, --user and --limit reach the server."""
    grant = "grt_00000000000000000001"
    first = seed(wired, grant_id=grant)
    seed(wired, user="bob")
    third = seed(wired, grant_id=grant)
    assert ids(as_json(live_server, "sam", "sessions", "list", "--grant", grant)) == [
        third.id,
        first.id,
    ]
    assert len(ids(as_json(live_server, "sam", "sessions", "list", "--user", "bob"))) == 1
    assert ids(as_json(live_server, "sam", "sessions", "list", "--limit", "1")) == [third.id]


def test_list_table_runs_and_marks_live_sessions(live_server: str, wired: App) -> None:
    """The table lists a live session as LIVE."""
    seed(wired, end=False)
    out = succeeded(cli(live_server, "alice", "sessions", "list"))
    assert "LIVE" in out
    assert "ID" in out


def test_show_prints_the_record_and_the_labelled_command_log(live_server: str, wired: App) -> None:
    """Who, where, how it ended, the recording's hash, and the command lines under a heading
    that says they are best-effort."""
    session = seed(wired, commands=["ls -la /etc", "systemctl restart postgresql"])
    out = succeeded(cli(live_server, "alice", "sessions", "show", session.id))
    assert session.id in out
    assert "alice as server-admin on db-1" in out
    assert "closed, exit 0" in out
    assert session.recording_sha256 is not None
    assert session.recording_sha256 in out
    log = out[out.index("best-effort command log") :]
    assert "ls -la /etc" in log
    assert "systemctl restart postgresql" in log


def test_show_makes_control_characters_in_commands_visible(live_server: str, wired: App) -> None:
    """An exec command carrying an OSC 52 clipboard write is shown escaped, never raw."""
    hostile = "echo \x1b]52;c;cm0gLXJmIH4=\x07 done"
    session = seed(wired, kind=SessionKind.EXEC, command=hostile, commands=["x\x9b6n"])
    out = succeeded(cli(live_server, "sam", "sessions", "show", session.id))
    assert "\x1b" not in out
    assert "\x9b" not in out
    assert "\x07" not in out
    assert "echo \\x1b]52;c;cm0gLXJmIH4=\\x07 done" in out
    assert "x\\x9b6n" in out


def test_show_json_carries_the_command_log(live_server: str, wired: App) -> None:
    """--output json: the session fields and commands marked best_effort."""
    session = seed(wired, commands=["whoami"])
    data = as_json(live_server, "alice", "sessions", "show", session.id)
    assert data["id"] == session.id
    assert data["commands"] == [{"command": "whoami", "best_effort": True}]


# --- play --------------------------------------------------------------------------------------
def test_play_writes_the_output_with_hostile_escapes_removed(
    live_server: str, wired: App, slept: list[float]
) -> None:
    """Replay writes the drawing and text of the session, never its title, clipboard, link,
    query, mouse-mode, DCS/APC or C1 sequences, nor its typed input."""
    session = seed(wired)
    out = raw_stdout(cli(live_server, "alice", "sessions", "play", session.id))
    assert out == HOSTILE_SHOWN
    for marker in ("\x1b]", "\x1bP", "\x1b_", "\x9b", "\x07", "\x1b[6n", "\x1b[?1000h"):
        assert marker not in out
    assert "cat notes\r" not in out.replace("cat notes\r\n", "")  # the "i" event is not shown


def test_play_waits_as_recorded_with_long_pauses_cut(
    live_server: str, wired: App, slept: list[float]
) -> None:
    """At speed 1 each output waits its recorded gap; the minute of idle time waits 2 s."""
    session = seed(wired)
    succeeded(cli(live_server, "alice", "sessions", "play", session.id))
    assert slept == pytest.approx([0.25, 0.75, 0.5, 0.5, 2.0])


def test_play_speed_divides_waits_and_max_wait_caps_them(
    live_server: str, wired: App, slept: list[float]
) -> None:
    """--speed 2 halves every gap; --max-wait 0.3 caps what remains."""
    session = seed(wired)
    args = ("sessions", "play", session.id, "--speed", "2", "--max-wait", "0.3")
    out = raw_stdout(cli(live_server, "sam", *args))
    assert out == HOSTILE_SHOWN
    assert slept == pytest.approx([0.125, 0.3, 0.25, 0.25, 0.3])


def test_play_with_max_wait_zero_never_sleeps(
    live_server: str, wired: App, slept: list[float]
) -> None:
    """--max-wait 0 writes the whole session at once."""
    session = seed(wired)
    succeeded(cli(live_server, "alice", "sessions", "play", session.id, "--max-wait", "0"))
    assert slept == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--speed", "0"), "--speed"),
        (("--speed", "-1"), "--speed"),
        (("--speed", "1001"), "--speed"),
        (("--speed", "nan"), "--speed"),
        (("--max-wait", "-1"), "--max-wait"),
    ],
)
def test_play_refuses_a_bad_pace_with_exit_2(
    live_server: str, wired: App, args: tuple[str, ...], says: str
) -> None:
    """Speed must be above 0 and at most 1000, the longest wait 0 or more."""
    session = seed(wired)
    proc = run(live_server, "alice", "sessions", "play", session.id, *args)
    assert proc.returncode == 2, proc.stderr
    assert says in said(proc)
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda raw: raw + b'[1.0, "o"\n', "line 9"),
        (lambda raw: b"garbage\n" + raw, "line 1"),
        (lambda raw: raw.replace(b'"o"', b"7", 1), "line 2"),
        (lambda raw: b"\xff" + raw, "not UTF-8"),
        (lambda raw: b"", "empty"),
    ],
    ids=["cut event", "no header", "bad code", "not utf-8", "empty"],
)
def test_play_of_a_malformed_recording_is_a_clear_error(
    live_server: str, wired: App, damage: Any, says: str
) -> None:
    """A recording that is not asciicast v2 exits 2 with a sentence naming the session and the
    problem, writes nothing and shows no traceback."""
    session = seed(wired, end=False)
    path = recording_of(wired, session)
    path.write_bytes(damage(path.read_bytes()))
    proc = run(live_server, "alice", "sessions", "play", session.id)
    assert proc.returncode == 2, proc.stderr
    message = said(proc)
    assert message.startswith(f"keyturn: error: the recording of {session.id} cannot be played")
    assert says in message
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_play_of_someone_elses_session_exits_5(live_server: str, wired: App) -> None:
    """bob cannot replay alice's session: not found."""
    session = seed(wired, user="alice")
    proc = run(live_server, "bob", "sessions", "play", session.id)
    assert proc.returncode == 5, proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("command", ["show", "play", "export"])
@pytest.mark.parametrize("bad_id", ["../grants", "ses_XYZ", "ses_0123/../../v1/grants", ""])
def test_malformed_id_exits_2_before_asking_the_server(
    live_server: str, command: str, bad_id: str, tmp_path: Path
) -> None:
    """An id that is not ses_ and hex is refused by the CLI itself (it never becomes a URL)."""
    extra = ["--file", str(tmp_path / "out.cast")] if command == "export" else []
    proc = run(live_server, "sam", "sessions", command, bad_id, *extra)
    assert proc.returncode == 2, proc.stderr
    assert "is not a session id" in said(proc)
    assert not (tmp_path / "out.cast").exists()


# --- export ------------------------------------------------------------------------------------
def test_export_writes_the_recording_byte_for_byte_mode_0600(
    live_server: str, wired: App, tmp_path: Path
) -> None:
    """The file is the stored .cast exactly, readable by its owner only, and its hash matches
    the one chained when the session ended."""
    session = seed(wired)
    target = tmp_path / "evidence" / "session.cast"
    target.parent.mkdir()
    data = as_json(live_server, "alice", "sessions", "export", session.id, "-o", str(target))
    stored = recording_of(wired, session).read_bytes()
    assert target.read_bytes() == stored
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert data == {
        "session_id": session.id,
        "path": str(target),
        "bytes": len(stored),
        "sha256": session.recording_sha256,
        "chained_sha256": session.recording_sha256,
        "matches_chain": True,
    }


def test_export_table_says_the_hash_matches(live_server: str, wired: App, tmp_path: Path) -> None:
    """The human output names the file and confirms the chained hash."""
    session = seed(wired)
    out = succeeded(
        cli(
            live_server, "sam", "sessions", "export", session.id, "--file", str(tmp_path / "s.cast")
        )
    )
    assert "matches the hash chained" in out


def test_export_refuses_to_overwrite_and_force_replaces(
    live_server: str, wired: App, tmp_path: Path
) -> None:
    """An existing file is left alone (exit 2) unless --force, which replaces it, mode 0600."""
    session = seed(wired)
    target = tmp_path / "out" / "session.cast"
    target.parent.mkdir()
    target.write_bytes(b"keep me")
    target.chmod(0o644)
    proc = run(live_server, "alice", "sessions", "export", session.id, "--file", str(target))
    assert proc.returncode == 2, proc.stderr
    assert "exists" in said(proc)
    assert target.read_bytes() == b"keep me"
    args = ("sessions", "export", session.id, "--file", str(target), "--force")
    succeeded(cli(live_server, "alice", *args))
    assert target.read_bytes() == recording_of(wired, session).read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["session.cast"]  # no temporary left


def test_export_refuses_a_symlink_in_the_way(live_server: str, wired: App, tmp_path: Path) -> None:
    """A symlink named like the output is not followed (its target is untouched)."""
    session = seed(wired)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "session.cast"
    link.symlink_to(victim)
    proc = run(live_server, "alice", "sessions", "export", session.id, "--file", str(link))
    assert proc.returncode == 2, proc.stderr
    assert victim.read_text() == "precious"


def test_export_of_a_live_session_has_nothing_to_compare(
    live_server: str, wired: App, tmp_path: Path
) -> None:
    """A live session's recording is exported as far as written; no hash is chained yet."""
    session = seed(wired, end=False)
    target = tmp_path / "live.cast"
    data = as_json(live_server, "alice", "sessions", "export", session.id, "-o", str(target))
    assert target.read_bytes() == recording_of(wired, session).read_bytes()
    assert data["chained_sha256"] is None
    assert data["matches_chain"] is None


def test_export_of_an_edited_recording_writes_it_and_exits_8(
    live_server: str, wired: App, tmp_path: Path
) -> None:
    """The recording was changed after the session ended: the file is written as stored (it is
    evidence) and the command exits 8 saying the hash differs."""
    session = seed(wired)
    path = recording_of(wired, session)
    edited = path.read_bytes().replace(b"red", b"RED")
    path.write_bytes(edited)
    target = tmp_path / "edited.cast"
    proc = run(live_server, "sam", "sessions", "export", session.id, "--file", str(target))
    assert proc.returncode == 8, proc.stderr
    assert "differs from the one chained" in said(proc)
    assert "DOES NOT MATCH" in proc.stdout
    assert target.read_bytes() == edited


def test_export_into_a_missing_directory_exits_2(
    live_server: str, wired: App, tmp_path: Path
) -> None:
    """A destination that cannot be written is a clear error, not a traceback."""
    session = seed(wired)
    target = tmp_path / "no" / "such" / "dir.cast"
    proc = run(live_server, "alice", "sessions", "export", session.id, "--file", str(target))
    assert proc.returncode == 2, proc.stderr
    assert "cannot write" in said(proc)
    assert "Traceback" not in proc.stderr


# --- audit verify ------------------------------------------------------------------------------
def test_audit_verify_exits_8_naming_the_session_whose_recording_changed(
    live_server: str, wired: App
) -> None:
    """``keyturn audit verify`` passes, then fails naming the session once one byte of its
    recording is changed."""
    session = seed(wired)
    assert run(live_server, "sam", "audit", "verify").returncode == 0
    path = recording_of(wired, session)
    data = bytearray(path.read_bytes())
    data[40] ^= 0x20
    path.write_bytes(bytes(data))
    proc = run(live_server, "sam", "audit", "verify")
    assert proc.returncode == 8, proc.stderr
    assert "AUDIT CHAIN BROKEN" in proc.stdout
    assert session.id in proc.stdout


def test_audit_verify_exits_8_naming_the_session_whose_recording_was_deleted(
    live_server: str, wired: App
) -> None:
    """A deleted recording fails ``keyturn audit verify`` naming its session."""
    session = seed(wired)
    recording_of(wired, session).unlink()
    proc = run(live_server, "sam", "audit", "verify")
    assert proc.returncode == 8, proc.stderr
    assert session.id in proc.stdout
    assert "missing" in proc.stdout
