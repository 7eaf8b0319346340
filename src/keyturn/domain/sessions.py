"""Sessions through the recording SSH gateway: the record, the recording format, the command log.

A session is one SSH session channel (shell, exec or sftp) a user opened through ``keyturn
gateway`` under one grant. Its recording is an asciicast v2 file (the asciinema format:
https://docs.asciinema.org/manual/asciicast/v2/): a JSON header line, then one JSON array per
event, ``[seconds since start, code, data]`` with code ``"o"`` (output), ``"i"`` (input, only when
the role records input) or ``"r"`` (terminal resized to ``"COLSxROWS"``). Keyturn adds a
``"keyturn"`` object to the header naming the session, grant, request, user, role and target
(identity correlation); players ignore keys they do not know.

Pure: no I/O, no clock reads.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from keyturn.domain.audit import format_time
from keyturn.domain.errors import InvalidInput

CAST_VERSION = 2
#: what the gateway accepts as an SSH user name: a target name (as ``config.NAME_PATTERN``)
TARGET_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
#: longest command kept in the store and the audit chain (the recording keeps everything)
COMMAND_MAX = 4096
#: longest line of the best-effort command log
COMMAND_LINE_MAX = 1024


class SessionKind(StrEnum):
    """What the SSH session channel runs: an interactive shell, one command, or sftp."""

    SHELL = "shell"
    EXEC = "exec"
    SFTP = "sftp"


class SessionStatus(StrEnum):
    """``live`` while the channel is open, ``ended`` after."""

    LIVE = "live"
    ENDED = "ended"


class EndReason(StrEnum):
    """Why a session ended.

    ``closed``: the command or shell exited, or the client closed the channel; ``grant_ended``:
    its grant expired or was released or revoked (the gateway cut it); ``recording_failed``: the
    recording could not be written (fail closed); ``upstream_failed``: the target went away;
    ``gateway_stopped``: the gateway shut down; ``interrupted``: found live after a gateway crash;
    ``error``: the gateway failed (logged with its traceback).
    """

    CLOSED = "closed"
    GRANT_ENDED = "grant_ended"
    RECORDING_FAILED = "recording_failed"
    UPSTREAM_FAILED = "upstream_failed"
    GATEWAY_STOPPED = "gateway_stopped"
    INTERRUPTED = "interrupted"
    ERROR = "error"


@dataclass(frozen=True)
class Session:
    """One recorded session (times aware UTC).

    Attributes:
        id: ``ses_…``; also the recording's file stem.
        command: the exec command (cut to :data:`COMMAND_MAX` characters), ``sftp`` for the
            subsystem, None for a shell.
        client: the client's address as ``host:port``.
        gateway: the gateway instance relaying it (``gateway.instance``): after a crash, each
            gateway ends only its own sessions.
        recording: the recording's path relative to ``gateway.recordings_dir``.
        recording_sha256 / recording_bytes: set when the session ended (the hash is also in
            the ``session.ended`` audit event, so an edited recording fails ``audit verify``).
        exit_status: the remote command's exit status, when it sent one.
    """

    id: str
    grant_id: str
    request_id: str
    user_id: str
    role: str
    target: str
    kind: SessionKind
    started_at: datetime
    recording: str
    client: str = ""
    gateway: str = ""
    command: str | None = None
    status: SessionStatus = SessionStatus.LIVE
    ended_at: datetime | None = None
    end_reason: EndReason | None = None
    exit_status: int | None = None
    recording_sha256: str | None = None
    recording_bytes: int | None = None

    def subject(self) -> dict[str, str]:
        """The audit subject: the session and who and what it was under."""
        return {
            "session_id": self.id,
            "grant_id": self.grant_id,
            "request_id": self.request_id,
            "user_id": self.user_id,
            "role": self.role,
            "target": self.target,
        }


def target_from_user_name(user_name: str) -> str:
    """The target named by the SSH user name (the gateway's convention: ``ssh TARGET@gateway``).

    Raises:
        InvalidInput: not a target name (shell or path characters, upper case, too long …).
    """
    if not TARGET_USER.fullmatch(user_name):
        raise InvalidInput(
            "the SSH user name must be the target's name (letters, digits, '.', '_', '-'), "
            "e.g. ssh -p 2200 db-1@gateway"
        )
    return user_name


def cast_header(
    session: Session,
    *,
    width: int,
    height: int,
    term: str | None,
    input_recorded: bool,
    command: str | None = None,
) -> str:
    """The asciicast v2 header line (JSON, no newline) for ``session``; ``command`` is the
    whole command as received (the store and audit chain keep :data:`COMMAND_MAX` characters
    and its SHA-256)."""
    header: dict[str, Any] = {
        "version": CAST_VERSION,
        "width": max(1, width),
        "height": max(1, height),
        "timestamp": int(session.started_at.timestamp()),
        "title": f"{session.user_id} on {session.target} as {session.role} ({session.id})",
        "env": {"TERM": term or "", "SHELL": ""},
        "keyturn": {
            **session.subject(),
            "kind": str(session.kind),
            "command": command if command is not None else session.command,
            "started_at": format_time(session.started_at),
            "input_recorded": input_recorded,
        },
    }
    return json.dumps(header, ensure_ascii=False, separators=(",", ":"))


def command_facts(command: str | None) -> dict[str, Any]:
    """What the audit chain keeps of a command beyond its first :data:`COMMAND_MAX` characters:
    its length, its SHA-256 and whether it was cut (the recording's header holds all of it)."""
    if command is None:
        return {}
    return {
        "command_length": len(command),
        "command_sha256": hashlib.sha256(command.encode("utf-8", "surrogateescape")).hexdigest(),
        "command_truncated": len(command) > COMMAND_MAX,
    }


def cast_event(seconds: float, code: str, data: str) -> str:
    """One asciicast v2 event line (JSON, no newline): ``[seconds, code, data]``."""
    return json.dumps([round(seconds, 6), code, data], ensure_ascii=False)


@dataclass
class TextStream:
    """Bytes to text across chunk boundaries (UTF-8; invalid bytes become U+FFFD), so a
    character split between two reads is recorded whole."""

    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    def feed(self, data: bytes) -> str:
        """The text completed by ``data``."""
        return self._decoder.decode(data)

    @property
    def pending(self) -> int:
        """Bytes of an unfinished character the decoder holds (0 to 3)."""
        buffered: bytes = self._decoder.getstate()[0]
        return len(buffered)

    def flush(self) -> str:
        """What is left at the end of the stream."""
        return self._decoder.decode(b"", final=True)


#: CSI, OSC, SS3 (``ESC O A``: cursor keys in application mode, F1 to F4) or another escape
_CSI_OR_ESC = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|O.|.)", re.S)


#: how much output may follow a typed line before its echo is no longer looked for
ECHO_WINDOW = 16 * 1024


@dataclass
class CommandLog:
    """Best-effort command lines typed at an interactive prompt.

    Input is kept as a line buffer (backspace, Ctrl-U and Ctrl-C edit it; escape sequences such
    as arrow keys are dropped). A line is reported once Enter was pressed **and** the terminal
    echoed it: a line of output after the first keystroke ends with its text (backspaces
    applied), before or after the Enter (typed, pasted, or echoed late over a slow link),
    within :data:`ECHO_WINDOW` characters of output. Terminals echo lines in the order they
    were typed, so once a later line's echo is seen an earlier line that had none is dropped.
    A password typed at a prompt with echo off is therefore not reported even when the prompt,
    or the output of the next command, contains its text.
    Best-effort by nature: history recall, tab completion and full-screen programs are not
    understood; the recording is the authoritative record.
    """

    _line: list[str] = field(default_factory=list)
    _line_start: int | None = None
    _pending: list[tuple[str, int]] = field(default_factory=list)
    _out: str = ""
    _out_base: int = 0
    _input: TextStream = field(default_factory=TextStream)
    _output: TextStream = field(default_factory=TextStream)

    @property
    def _out_end(self) -> int:
        return self._out_base + len(self._out)

    def output(self, data: bytes) -> list[str]:
        """Feed terminal output; return the pending lines whose echo it completed."""
        text = _CSI_OR_ESC.sub("", self._output.feed(data))
        self._out += text
        if len(self._out) > 2 * ECHO_WINDOW:
            cut = len(self._out) - ECHO_WINDOW
            self._out, self._out_base = self._out[cut:], self._out_base + cut
        return self._echoed()

    def input(self, data: bytes) -> list[str]:
        """Feed keystrokes; return the lines completed by them whose echo was already seen."""
        text = _CSI_OR_ESC.sub("", self._input.feed(data))
        for char in text:
            if self._line_start is None:
                self._line_start = self._out_end
            if char in "\r\n":
                line = "".join(self._line).strip()
                if line:
                    self._pending.append((line[:COMMAND_LINE_MAX], self._line_start))
                    del self._pending[:-16]
                self._line.clear()
                self._line_start = None
            elif char in "\x7f\x08":
                if self._line:
                    self._line.pop()
            elif char in "\x15\x03":  # Ctrl-U, Ctrl-C
                self._line.clear()
            elif char >= " " and len(self._line) < COMMAND_LINE_MAX * 2:
                self._line.append(char)
        return self._echoed()

    def _echoed(self) -> list[str]:
        """Report pending lines whose echo is seen, latest first so that each earlier line must
        be echoed before the next one's echo; drop those that can no longer be."""
        done, keep = [], []
        bound = self._out_end  # an earlier line's echo must end before the next one's began
        for line, start in reversed(self._pending):
            if start < self._out_base:
                continue
            region = self._out[start - self._out_base : bound - self._out_base]
            found = _echo_line(region, line)
            if found is not None:
                done.append(line)
                bound = start + found
            elif bound == self._out_end and self._out_end - start < ECHO_WINDOW:
                keep.append((line, start))
        self._pending = keep[::-1]
        return done[::-1]


def _echo_line(text: str, line: str) -> int | None:
    """Where the first complete line of ``text`` that ends with ``line`` begins (backspaces
    applied; a trailing CR and blanks ignored), or None."""
    begin = 0
    while (end := text.find("\n", begin)) != -1:
        if _erased(text[begin:end]).rstrip(" \r").endswith(line):
            return begin
        begin = end + 1
    return None


def _erased(text: str) -> str:
    """``text`` as a terminal leaves it: each backspace erases the character before it."""
    if "\b" not in text:
        return text
    kept: list[str] = []
    for char in text:
        if char != "\b":
            kept.append(char)
        elif kept:
            kept.pop()
    return "".join(kept)
