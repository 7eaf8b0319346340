"""Replaying a session recording: read an asciicast v2 file, then pace and filter its output.

The recording format is described in ``keyturn.domain.sessions`` (asciicast v2,
https://docs.asciinema.org/manual/asciicast/v2/): a JSON header object, then one JSON array
``[seconds, code, data]`` per line. Only output (``"o"``) is replayed; input (``"i"``), resizes
(``"r"``) and codes this player does not know are read, checked and skipped.

Every output chunk passes through one :class:`~keyturn.domain.terminal.TerminalFilter` for the
whole replay, so a recorded session cannot set the viewer's title or clipboard or make their
terminal type replies, even with a sequence split across two events.

Pure: no I/O, no clock; the caller sleeps and writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from keyturn.domain.errors import InvalidInput
from keyturn.domain.sessions import CAST_VERSION
from keyturn.domain.terminal import TerminalFilter

#: the fastest replay ``speed`` accepted (a multiple of real time)
MAX_SPEED = 1000.0


@dataclass(frozen=True)
class CastEvent:
    """One recorded event: ``seconds`` since the start, ``code`` (``o``, ``i``, ``r`` …), data."""

    seconds: float
    code: str
    data: str


@dataclass(frozen=True)
class Cast:
    """A parsed recording: its header object and its events in file order."""

    header: dict[str, Any]
    events: tuple[CastEvent, ...]


@dataclass(frozen=True)
class Frame:
    """Wait ``wait`` seconds (wall clock, already scaled and capped), then write ``text``."""

    wait: float
    text: str


def parse_cast(raw: bytes) -> Cast:
    """Read an asciicast v2 recording.

    Args:
        raw: the file's bytes (UTF-8 JSON lines; blank lines are ignored).

    Raises:
        InvalidInput: not UTF-8, no header, a header that is not a version 2 object, or an event
            line that is not ``[seconds ≥ 0, code, text]`` (naming the line).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the recording is not UTF-8 (byte {exc.start})") from exc
    lines = [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if not lines:
        raise InvalidInput("the recording is empty: no asciicast header")
    number, first = lines[0]
    header = _json(first, number)
    if not isinstance(header, dict) or header.get("version") != CAST_VERSION:
        raise InvalidInput(f"line {number} of the recording is not an asciicast v2 header")
    return Cast(header, tuple(_event(_json(line, n), n) for n, line in lines[1:]))


def _json(line: str, number: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"line {number} of the recording is not JSON ({exc.msg} at column {exc.colno})",
            line=number,
        ) from exc


def _event(value: Any, number: int) -> CastEvent:
    if isinstance(value, list) and len(value) == 3:
        seconds, code, data = value
        if (
            isinstance(seconds, int | float)
            and not isinstance(seconds, bool)
            and math.isfinite(seconds)
            and seconds >= 0
            and isinstance(code, str)
            and isinstance(data, str)
        ):
            return CastEvent(float(seconds), code, data)
    raise InvalidInput(
        f"line {number} of the recording is not an event [seconds, code, data]", line=number
    )


def check_pace(speed: float, max_wait: float) -> None:
    """Validate replay settings.

    Raises:
        InvalidInput: ``speed`` not in (0, :data:`MAX_SPEED`], or ``max_wait`` negative or not
            finite.
    """
    if not (math.isfinite(speed) and 0 < speed <= MAX_SPEED):
        raise InvalidInput(f"--speed must be above 0 and at most {MAX_SPEED:g}", field="speed")
    if not (math.isfinite(max_wait) and max_wait >= 0):
        raise InvalidInput("--max-wait must be 0 seconds or more", field="max_wait")


def frames(cast: Cast, *, speed: float = 1.0, max_wait: float = 2.0) -> Iterator[Frame]:
    """The output events of ``cast`` as frames to write, in order.

    Each frame waits the recorded gap since the previous output event divided by ``speed``,
    but never more than ``max_wait`` seconds (long idle stretches are shortened); a gap that
    runs backwards counts as 0. Text is filtered by one terminal filter for the whole replay;
    what it still holds at the end comes as a last frame without a wait.

    Raises:
        InvalidInput: see :func:`check_pace`.
    """
    check_pace(speed, max_wait)
    return _frames(cast, speed, max_wait)


def _frames(cast: Cast, speed: float, max_wait: float) -> Iterator[Frame]:
    terminal = TerminalFilter()
    previous = 0.0
    for event in cast.events:
        if event.code != "o":
            continue
        gap = max(0.0, event.seconds - previous)
        previous = max(previous, event.seconds)
        yield Frame(min(gap / speed, max_wait), terminal.feed(event.data))
    rest = terminal.flush()
    if rest:
        yield Frame(0.0, rest)
