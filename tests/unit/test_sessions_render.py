"""How ``keyturn sessions list|show`` draw sessions for people: LIVE marked, long commands cut,
control characters in commands made visible."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from keyturn.entrypoints import cli_render as render


def a_session(**changes: Any) -> dict[str, Any]:
    """Session JSON as ``GET /v1/sessions`` gives it (ended, exit 0)."""
    data: dict[str, Any] = {
        "id": "ses_0123456789abcdef0123",
        "grant_id": "grt_0123456789abcdef0123",
        "request_id": "req_0123456789abcdef0123",
        "user_id": "alice",
        "role": "server-admin",
        "target": "db-1",
        "kind": "exec",
        "command": "uptime",
        "client": "127.0.0.1:50022",
        "status": "ended",
        "started_at": "2026-11-17T02:45:00.000000Z",
        "ended_at": "2026-11-17T02:46:00.000000Z",
        "end_reason": "closed",
        "exit_status": 0,
        "recording": "ses_0123456789abcdef0123.cast",
        "recording_sha256": "ab" * 32,
        "recording_bytes": 1234,
    }
    return data | changes


def drawn(draw: Any, data: dict[str, Any]) -> str:
    """What ``draw`` prints on a wide terminal."""
    buffer = io.StringIO()
    draw(Console(file=buffer, width=300, markup=False, highlight=False, soft_wrap=True), data)
    return buffer.getvalue()


def test_table_marks_a_live_session_and_shows_an_ended_ones_end() -> None:
    """A live session reads LIVE with no reason or exit; an ended one its time, reason, exit."""
    live = a_session(id="ses_live", status="live", ended_at=None, end_reason=None, exit_status=None)
    out = drawn(render.session_table, {"items": [live, a_session(exit_status=3)]})
    live_row = next(line for line in out.splitlines() if "ses_live" in line)
    ended_row = next(line for line in out.splitlines() if "ses_0123" in line)
    assert "LIVE" in live_row
    assert "closed" not in live_row
    assert "2026-11-17T02:46:00.000000Z" in ended_row
    assert "closed" in ended_row
    assert " 3 " in ended_row


def test_table_cuts_a_long_command_to_forty_characters() -> None:
    """A long command is cut with an ellipsis; its start is kept."""
    command = "pg_dump --format=custom --file=/backups/db.dump " + "x" * 200
    out = drawn(render.session_table, {"items": [a_session(command=command)]})
    row = next(line for line in out.splitlines() if "ses_0123" in line)
    shown = row[row.index("pg_dump") :].rstrip()
    assert shown == command[: render.COMMAND_COLUMN - 1] + "…"


def test_commands_with_control_characters_are_drawn_escaped() -> None:
    """A recorded command cannot move the viewer's cursor or set their title."""
    hostile = "echo \x1b]0;owned\x07\x1b[2J\r\n\x9b6n"
    data = a_session(command=hostile, commands=[{"command": hostile, "best_effort": True}])
    for out in (drawn(render.session_table, {"items": [data]}), drawn(render.session_detail, data)):
        assert not any(c in out for c in "\x1b\x07\x9b\r")
        assert "echo \\x1b]0;owned" in out


def test_detail_labels_the_command_log_best_effort() -> None:
    """The command lines come under a heading that says they are best-effort."""
    data = a_session(kind="shell", command=None, commands=[{"command": "ls", "best_effort": True}])
    out = drawn(render.session_detail, data)
    heading = next(line for line in out.splitlines() if "command log" in line)
    assert heading.startswith("best-effort command log")
    assert out.splitlines()[-1] == "  ls"


def test_detail_of_a_session_without_commands_says_none_were_seen() -> None:
    """No echoed command line: the log says so rather than being blank."""
    out = drawn(render.session_detail, a_session(commands=[]))
    assert "(none seen)" in out
