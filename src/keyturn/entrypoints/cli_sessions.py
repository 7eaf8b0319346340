"""``keyturn sessions …``: sessions recorded by the SSH gateway (``keyturn gateway``).

``list`` and ``show`` read the session records; ``play`` replays a recording in this terminal
with everything that could act on the terminal (title, clipboard, queries that make it type)
filtered out; ``export`` saves a recording byte for byte, for ``asciinema play`` or an auditor.
All of them ask the server (``GET /v1/sessions…``): admins see every session, others their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from keyturn.domain.errors import InvalidInput
from keyturn.domain.playback import Frame, check_pace, frames, parse_cast
from keyturn.entrypoints import cli_render as render
from keyturn.entrypoints.cli import _ctx, app, err
from keyturn.entrypoints.cli_errors import EXIT_AUDIT_BROKEN

sessions_app = typer.Typer(
    help="Sessions recorded by the SSH gateway: list, show, play (filtered), export (.cast).",
    no_args_is_help=True,
)
app.add_typer(sessions_app, name="sessions")

#: how ``play`` waits between frames (seconds); tests put a recorder here instead
sleep: Callable[[float], None] = time.sleep
#: what ``play`` writes when it stops on a terminal: default colours, cursor shown
TERMINAL_RESET = "\x1b[0m\x1b[?25h"
_SESSION_ID = re.compile(r"^ses_[0-9a-f]{1,64}$")  # as the API's SessionId path parameter

SessionIdArg = Annotated[str, typer.Argument(help="Session id (ses_…, see 'sessions list').")]


def session_path(session_id: str) -> str:
    """The API path of a session.

    Raises:
        InvalidInput: ``session_id`` is not a session id (checked before it goes in a URL).
    """
    if not _SESSION_ID.fullmatch(session_id):
        raise InvalidInput(
            f"{session_id!r} is not a session id (ses_ and hex digits, as 'keyturn sessions "
            "list' shows)",
            field="session_id",
        )
    return f"/v1/sessions/{session_id}"


@sessions_app.command("list")
def sessions_list(
    ctx: typer.Context,
    grant: Annotated[
        str | None, typer.Option("--grant", help="Only this grant's sessions.")
    ] = None,
    user: Annotated[str | None, typer.Option(help="Only this user's sessions.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """List sessions, newest first (admins: all; others: their own)."""
    c = _ctx(ctx)
    params: dict[str, Any] = {"limit": limit}
    if grant is not None:
        params["grant_id"] = grant
    if user is not None:
        params["user_id"] = user
    c.emit(c.client().call("GET", "/v1/sessions", params=params), render.session_table)


@sessions_app.command("show")
def sessions_show(ctx: typer.Context, session_id: SessionIdArg) -> None:
    """Show one session: who, what, when, how it ended, its recording, and the best-effort
    command log (lines seen typed and echoed; the recording is the authoritative record)."""
    c = _ctx(ctx)
    c.emit(c.client().call("GET", session_path(session_id)), render.session_detail)


@sessions_app.command("play")
def sessions_play(
    ctx: typer.Context,
    session_id: SessionIdArg,
    speed: Annotated[
        float, typer.Option(help="Replay speed: 2 is twice as fast (above 0, at most 1000).")
    ] = 1.0,
    max_wait: Annotated[
        float, typer.Option("--max-wait", help="Longest pause, in seconds (idle time is cut).")
    ] = 2.0,
) -> None:
    """Replay a session's output in this terminal, paced as recorded. Escape sequences that
    could act on your terminal (title, clipboard, links, queries that make it type, mouse
    reporting) are removed; colours, cursor movement and the alternate screen are kept. Input
    and resize events are not shown. Exit 2 if the recording is malformed."""
    check_pace(speed, max_wait)
    raw = _ctx(ctx).client().download(session_path(session_id) + "/recording")
    try:
        cast = parse_cast(raw)
    except InvalidInput as exc:
        raise InvalidInput(
            f"the recording of {session_id} cannot be played: {exc.message}"
        ) from exc
    on_terminal = sys.stdout.isatty()
    try:
        replay(frames(cast, speed=speed, max_wait=max_wait), write=_write_out, sleep=sleep)
    finally:
        if on_terminal:
            _write_out(TERMINAL_RESET)


def replay(
    frames: Iterable[Frame], *, write: Callable[[str], None], sleep: Callable[[float], None]
) -> None:
    """Wait and write each frame in turn (no call for a zero wait or an empty text)."""
    for frame in frames:
        if frame.wait > 0:
            sleep(frame.wait)
        if frame.text:
            write(frame.text)


def _write_out(text: str) -> None:
    """Write to standard output as UTF-8 at once (through no layer that edits escapes)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", "replace"))
    sys.stdout.buffer.flush()


@sessions_app.command("export")
def sessions_export(
    ctx: typer.Context,
    session_id: SessionIdArg,
    file: Annotated[Path, typer.Option("--file", "-o", help="Where to write the .cast file.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Save a session's recording exactly as stored (asciicast v2: 'asciinema play FILE' plays
    it), mode 0600. Its SHA-256 is compared with the one chained in the audit trail when the
    session ended: exit 8 (after writing) if they differ."""
    c = _ctx(ctx)
    path = file.expanduser()
    if not force and (path.exists() or path.is_symlink()):
        raise InvalidInput(f"--file {path}: the file exists (--force replaces it)", field="file")
    session = c.client().call("GET", session_path(session_id))
    raw = c.client().download(session_path(session_id) + "/recording")
    write_private(path, raw, replace=force)
    data = export_report(session, path, raw)
    c.emit(data, render.session_export)
    if data["matches_chain"] is False:
        err.print(
            f"keyturn: the recording of {session_id} differs from the one chained when the "
            "session ended: run 'keyturn audit verify'"
        )
        raise typer.Exit(EXIT_AUDIT_BROKEN)


def export_report(session: dict[str, Any], path: Path, raw: bytes) -> dict[str, Any]:
    """What ``export`` wrote: path, size (bytes), SHA-256, the chained SHA-256 (None while the
    session is live or when its recording failed) and whether they match (None: nothing to
    compare with)."""
    digest = hashlib.sha256(raw).hexdigest()
    chained = session.get("recording_sha256")
    matches = None
    if chained is not None:
        matches = digest == chained and len(raw) == session.get("recording_bytes")
    return {
        "session_id": session["id"],
        "path": str(path),
        "bytes": len(raw),
        "sha256": digest,
        "chained_sha256": chained,
        "matches_chain": matches,
    }


def write_private(path: Path, data: bytes, *, replace: bool) -> None:
    """Write ``data`` to ``path`` with mode 0600. Without ``replace`` the file must not exist
    (nor a symlink by that name); with it, an existing file is replaced atomically. A failed
    write leaves no partial file.

    Raises:
        InvalidInput: the file exists (without ``replace``) or cannot be written.
    """
    tmp: str | None = None
    try:
        if replace:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            if tmp is not None:
                os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp if tmp is not None else path)
            raise
    except FileExistsError as exc:
        raise InvalidInput(f"--file {path}: the file exists (--force replaces it)") from exc
    except OSError as exc:
        raise InvalidInput(f"--file {path}: cannot write it ({exc.strerror or exc})") from exc
