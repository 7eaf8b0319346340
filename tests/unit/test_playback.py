"""Replaying a recording: asciicast v2 parsing, pacing by speed and longest wait, output only,
and one terminal filter across the whole replay."""

from __future__ import annotations

import json
from typing import Any

import pytest

from keyturn.domain.errors import InvalidInput
from keyturn.domain.playback import MAX_SPEED, Frame, check_pace, frames, parse_cast

HEADER = {"version": 2, "width": 80, "height": 24, "keyturn": {"session_id": "ses_01"}}


def cast(*events: list[Any], header: dict[str, Any] | None = None) -> bytes:
    """A recording: header line, then one JSON line per event."""
    lines = [json.dumps(header or HEADER), *(json.dumps(e) for e in events)]
    return ("\n".join(lines) + "\n").encode()


def test_parse_reads_header_and_events_in_order() -> None:
    """Header object and every event, ``i`` and ``r`` included, come back as written."""
    parsed = parse_cast(cast([0.5, "o", "a"], [0.7, "i", "b"], [1, "r", "100x30"]))
    assert parsed.header == HEADER
    assert [(e.seconds, e.code, e.data) for e in parsed.events] == [
        (0.5, "o", "a"),
        (0.7, "i", "b"),
        (1.0, "r", "100x30"),
    ]


def test_header_alone_is_an_empty_recording() -> None:
    """A session that printed nothing has a header and no events."""
    assert parse_cast(cast()).events == ()


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"", "empty"),
        (b"\n\n", "empty"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"not json\n", "line 1 .* not JSON"),
        (b"[2, 80, 24]\n", "line 1 .* not an asciicast v2 header"),
        (json.dumps({"version": 1}).encode() + b"\n", "not an asciicast v2 header"),
        (cast([0.1, "o", "ok"]) + b'[0.2, "o"]\n', "line 3 .* not an event"),
        (cast([-1, "o", "x"]), "line 2 .* not an event"),
        (cast([True, "o", "x"]), "line 2 .* not an event"),
        (cast(["0.1", "o", "x"]), "line 2 .* not an event"),
        (cast([0.1, "o", 42]), "line 2 .* not an event"),
        (cast([0.1, 5, "x"]), "line 2 .* not an event"),
        (cast() + b'[NaN, "o", "x"]\n', "line 2 .* not an event"),
        (cast() + b'[0.1, "o", "cut off', "line 2 .* not JSON"),
    ],
    ids=[
        "no bytes",
        "blank lines",
        "not utf-8",
        "header not json",
        "header not an object",
        "version 1",
        "short event",
        "negative time",
        "boolean time",
        "time as text",
        "data not text",
        "code not text",
        "NaN time",
        "truncated last line",
    ],
)
def test_malformed_recording_is_refused_naming_the_line(raw: bytes, says: str) -> None:
    """Anything but asciicast v2 is InvalidInput with a message a person can act on."""
    with pytest.raises(InvalidInput, match=says):
        parse_cast(raw)


def test_only_output_is_replayed_with_gaps_between_output_events() -> None:
    """``i`` and ``r`` are never written; the wait before an output is the gap since the last
    output (at speed 1, below the cap)."""
    recording = parse_cast(
        cast([0.5, "o", "$ "], [0.9, "i", "secret"], [1.0, "r", "90x20"], [1.5, "o", "ls\r\n"])
    )
    assert list(frames(recording, max_wait=10)) == [Frame(0.5, "$ "), Frame(1.0, "ls\r\n")]


def test_speed_divides_every_wait() -> None:
    """Speed 4: a 2-second gap is waited 0.5 s."""
    recording = parse_cast(cast([2, "o", "a"], [4, "o", "b"]))
    assert [f.wait for f in frames(recording, speed=4, max_wait=10)] == [0.5, 0.5]


def test_long_idle_gap_is_cut_to_max_wait() -> None:
    """An hour of idle time waits ``max_wait`` seconds; shorter gaps are untouched."""
    recording = parse_cast(cast([0.2, "o", "a"], [3600.2, "o", "b"], [3600.5, "o", "c"]))
    waits = [f.wait for f in frames(recording, speed=1, max_wait=2)]
    assert waits == pytest.approx([0.2, 2.0, 0.3])


def test_max_wait_zero_never_waits() -> None:
    """``max_wait`` 0 writes everything at once."""
    recording = parse_cast(cast([1, "o", "a"], [5, "o", "b"]))
    assert [f.wait for f in frames(recording, max_wait=0)] == [0, 0]


def test_time_running_backwards_waits_nothing() -> None:
    """An event stamped before the previous one is written at once, not after a negative wait."""
    recording = parse_cast(cast([2, "o", "a"], [1, "o", "b"], [2.5, "o", "c"]))
    assert [f.wait for f in frames(recording, max_wait=10)] == [2, 0, 0.5]


def test_hostile_output_is_filtered_even_across_events() -> None:
    """A title and clipboard write split over two events are dropped whole; colours stay."""
    recording = parse_cast(
        cast(
            [0.1, "o", "\x1b[32mok\x1b[0m \x1b]0;pwn"],
            [0.2, "o", "ed\x07 \x1b]52;c;ZWNobyBoaQ=="],
            [0.3, "o", "\x1b\\done\x1b[6n"],
        )
    )
    text = "".join(f.text for f in frames(recording, max_wait=1))
    assert text == "\x1b[32mok\x1b[0m  done"


def test_what_the_filter_holds_at_the_end_comes_last() -> None:
    """A sequence left open at the end of the recording is flushed (inert) without a wait."""
    recording = parse_cast(cast([0.1, "o", "bye \x1b["]))
    assert list(frames(recording)) == [Frame(0.1, "bye "), Frame(0.0, "[")]


@pytest.mark.parametrize(
    ("speed", "max_wait"),
    [
        (0, 2),
        (-1, 2),
        (MAX_SPEED + 1, 2),
        (float("inf"), 2),
        (float("nan"), 2),
        (1, -0.5),
        (1, float("inf")),
        (1, float("nan")),
    ],
)
def test_pace_out_of_range_is_refused(speed: float, max_wait: float) -> None:
    """Speed must be in (0, 1000]; the longest wait 0 or more, finite."""
    with pytest.raises(InvalidInput):
        check_pace(speed, max_wait)
    with pytest.raises(InvalidInput):
        frames(parse_cast(cast()), speed=speed, max_wait=max_wait)


def test_pace_limits_are_accepted() -> None:
    """The slowest and fastest speeds accepted, and no wait at all."""
    check_pace(0.01, 0)
    check_pace(MAX_SPEED, 3600)
