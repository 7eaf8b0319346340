"""Gateway session rules without I/O: the best-effort command log, the SSH user name that names
the target, and the asciicast v2 header and event lines."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from keyturn.domain.errors import InvalidInput
from keyturn.domain.sessions import (
    CAST_VERSION,
    CommandLog,
    Session,
    SessionKind,
    cast_event,
    cast_header,
    target_from_user_name,
)

T0 = datetime(2026, 11, 17, 2, 45, 0, tzinfo=UTC)
PROMPT = b"root@db-1:~# "
Step = tuple[str, bytes]


def run(*steps: Step) -> list[str]:
    """Feed keystrokes (``"in"``) and terminal output (``"out"``) in order; the lines logged."""
    log = CommandLog()
    lines: list[str] = []
    for direction, data in steps:
        lines += log.input(data) if direction == "in" else log.output(data)
    return lines


def keys(data: bytes) -> Step:
    return ("in", data)


def out(data: bytes) -> Step:
    return ("out", data)


def typed(text: str) -> list[Step]:
    """Each key pressed and echoed at once, as a terminal with echo on does."""
    steps: list[Step] = []
    for char in text:
        steps += [keys(char.encode()), out(char.encode())]
    return steps


def enter() -> list[Step]:
    """Enter, and the terminal's echo of it."""
    return [keys(b"\r"), out(b"\r\n")]


# --- the command log ---------------------------------------------------------------------------
def test_typed_and_echoed_line_is_reported_once() -> None:
    """A command typed at a prompt and echoed is logged when Enter is pressed, once."""
    steps = [out(PROMPT), *typed("ls -la /etc"), *enter(), out(b"total 0\r\n" + PROMPT)]
    assert run(*steps) == ["ls -la /etc"]


def test_password_typed_without_echo_is_not_reported() -> None:
    """A password at a prompt with echo off never reaches the log."""
    steps = [
        out(b"[sudo] password for alice: "),
        *[keys(c.encode()) for c in "hunter2"],
        keys(b"\r"),
        out(b"\r\n" + PROMPT),
    ]
    assert run(*steps) == []


def test_password_is_not_reported_when_later_output_contains_it() -> None:
    """Password "root": the next prompt and the next command's output both contain "root", and
    still only the command that was echoed is logged."""
    steps = [
        out(b"[sudo] password for alice: "),
        *[keys(c.encode()) for c in "root"],
        keys(b"\r"),
        out(b"\r\n" + PROMPT),
        *typed("whoami"),
        keys(b"\r"),
        out(b"\r\nroot\r\n" + PROMPT),
    ]
    assert run(*steps) == ["whoami"]


def test_password_is_not_reported_when_the_prompt_contains_it() -> None:
    """Password "alice" typed at a prompt naming alice is not taken for its echo."""
    steps = [out(b"[sudo] password for alice: "), keys(b"alice\r"), out(b"\r\n" + PROMPT)]
    assert run(*steps) == []


def test_backspace_edits_the_line_and_its_echo() -> None:
    """ "lss", backspace, " /tmp": the corrected line is logged (the echo's ``\\b \\b`` erases)."""
    steps = [out(PROMPT), *typed("lss"), keys(b"\x7f"), out(b"\x08 \x08"), *typed(" /tmp")]
    assert run(*steps, *enter()) == ["ls /tmp"]


def test_readline_backspace_echo_is_understood() -> None:
    """readline echoes a backspace as ``\\b`` and erase-to-end-of-line."""
    steps = [out(PROMPT), *typed("cat /etx"), keys(b"\x08"), out(b"\x08\x1b[K"), *typed("c")]
    assert run(*steps, *enter()) == ["cat /etc"]


def test_ctrl_u_discards_what_was_typed() -> None:
    """Ctrl-U clears the line: only what was typed after it is logged."""
    steps = [
        out(PROMPT),
        *typed("rm -rf /"),
        keys(b"\x15"),
        out(b"\r\x1b[K" + PROMPT),
        *typed("ls"),
        *enter(),
    ]
    assert run(*steps) == ["ls"]


def test_ctrl_c_discards_what_was_typed() -> None:
    """Ctrl-C abandons the line."""
    steps = [out(PROMPT), *typed("reboot"), keys(b"\x03"), out(b"^C\r\n" + PROMPT)]
    assert run(*steps, *typed("id"), *enter()) == ["id"]


def test_arrow_key_escapes_are_dropped_from_the_line() -> None:
    """Cursor keys are escape sequences, not text: they never appear in a logged line."""
    steps = [out(PROMPT), keys(b"\x1b[A\x1b[B\x1bOD"), *typed("uptime"), *enter()]
    assert run(*steps) == ["uptime"]


def test_multibyte_characters_split_across_chunks_are_whole() -> None:
    """UTF-8 cut between two reads, on both sides, is decoded whole."""
    word = "echo café ☕".encode()
    steps = [out(PROMPT)]
    for i in range(len(word)):  # one byte per read, each echoed
        steps += [keys(word[i : i + 1]), out(word[i : i + 1])]
    assert run(*steps, *enter()) == ["echo café ☕"]


def test_echo_arriving_after_enter_is_reported() -> None:
    """Over a slow link (or a paste) the echo comes after the Enter: the line is still logged."""
    steps = [out(PROMPT), keys(b"ls"), keys(b"\r"), out(b"ls\r\nfile\r\n" + PROMPT)]
    assert run(*steps) == ["ls"]


def test_pasted_lines_echoed_after_a_banner_are_reported_in_order() -> None:
    """Two lines sent before the login banner was printed are found after it, in order."""
    steps = [
        keys(b"echo one\necho two\n"),
        out(b"Last login: Tue Nov 17\r\n\r\necho one\r\necho two\r\n"),
        out(PROMPT + b"echo one\r\none\r\n" + PROMPT + b"echo two\r\ntwo\r\n"),
    ]
    assert run(*steps) == ["echo one", "echo two"]


def test_empty_lines_are_not_reported() -> None:
    """Enter on an empty prompt logs nothing."""
    assert run(out(PROMPT), *enter(), out(PROMPT), *enter()) == []


# --- the SSH user name -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["db-1", "db.prod_2", "A", "x" * 63])
def test_target_name_is_accepted(name: str) -> None:
    """Letters, digits, '.', '_' and '-', up to 63 characters, name a target."""
    assert target_from_user_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["db-1;rm -rf", "../etc", "a b", "$(id)", "", "x" * 64, "-db", ".db", "db/1", "db-1\n", "é"],
)
def test_anything_else_is_refused(name: str) -> None:
    """Shell, path and control characters, an empty or over-long name are refused."""
    with pytest.raises(InvalidInput, match="target's name"):
        target_from_user_name(name)


# --- asciicast lines ---------------------------------------------------------------------------
def a_session(command: str | None = "uptime") -> Session:
    return Session(
        id="ses_0123456789abcdef0123",
        grant_id="grt_0123456789abcdef0123",
        request_id="req_0123456789abcdef0123",
        user_id="alice",
        role="server-admin",
        target="db-1",
        kind=SessionKind.EXEC,
        started_at=T0,
        recording="ses_0123456789abcdef0123.cast",
        client="127.0.0.1:50022",
        command=command,
    )


def test_cast_header_is_one_json_line_with_the_keyturn_identity() -> None:
    """The header is asciicast v2 plus a ``keyturn`` object naming session, grant and user."""
    line = cast_header(
        a_session(), width=120, height=40, term="xterm-256color", input_recorded=False
    )
    assert "\n" not in line
    header = json.loads(line)
    assert header["version"] == CAST_VERSION == 2
    assert (header["width"], header["height"]) == (120, 40)
    assert header["timestamp"] == int(T0.timestamp())
    assert header["env"]["TERM"] == "xterm-256color"
    assert header["keyturn"] == {
        "session_id": "ses_0123456789abcdef0123",
        "grant_id": "grt_0123456789abcdef0123",
        "request_id": "req_0123456789abcdef0123",
        "user_id": "alice",
        "role": "server-admin",
        "target": "db-1",
        "kind": "exec",
        "command": "uptime",
        "started_at": "2026-11-17T02:45:00.000000Z",
        "input_recorded": False,
    }


def test_cast_header_without_a_pty_has_a_playable_size() -> None:
    """No terminal size (exec without a PTY): width and height are at least 1."""
    header = json.loads(cast_header(a_session(), width=0, height=0, term=None, input_recorded=True))
    assert (header["width"], header["height"]) == (1, 1)
    assert header["env"]["TERM"] == ""
    assert header["keyturn"]["input_recorded"] is True


def test_cast_header_keeps_a_hostile_command_inside_its_json_string() -> None:
    """A command with newlines and escapes stays one line and reads back unchanged."""
    command = "echo x\n\x1b]0;title\x07; rm -rf /tmp/a"
    line = cast_header(a_session(command), width=80, height=24, term=None, input_recorded=False)
    assert "\n" not in line
    assert json.loads(line)["keyturn"]["command"] == command


def test_cast_event_is_seconds_code_data() -> None:
    """``[seconds, code, data]``, seconds to the microsecond, text kept exactly."""
    line = cast_event(1.23456789, "o", "caf\u00e9 \x1b[31mred\r\n")
    assert "\n" not in line
    assert json.loads(line) == [1.234568, "o", "caf\u00e9 \x1b[31mred\r\n"]
