"""Free text is stored escaped; durations are ISO 8601 or short CLI forms, never months."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keyturn.domain.durations import (
    humanize,
    parse_iso_duration,
    parse_short_duration,
    to_iso_duration,
)
from keyturn.domain.errors import InvalidInput
from keyturn.domain.text import clean_text, escape_controls


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PT30M", timedelta(minutes=30)),
        ("PT1H30M", timedelta(minutes=90)),
        ("P1DT2H", timedelta(days=1, hours=2)),
        ("PT0S", timedelta(0)),
        ("PT20S", timedelta(seconds=20)),
    ],
)
def test_iso_durations_parse(text: str, expected: timedelta) -> None:
    """ISO 8601 day/time durations parse exactly."""
    assert parse_iso_duration(text) == expected


@pytest.mark.parametrize("text", ["", "P", "PT", "30m", "-PT5M", "P1M", "P1Y", "P1W", "PT5M junk"])
def test_bad_iso_durations_are_refused(text: str) -> None:
    """Empty, negative, calendar units and free text are refused."""
    with pytest.raises(InvalidInput):
        parse_iso_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("1h30m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("2d", timedelta(days=2)),
        ("PT10M", timedelta(minutes=10)),
    ],
)
def test_short_durations_parse(text: str, expected: timedelta) -> None:
    """The CLI's short forms (and ISO) parse."""
    assert parse_short_duration(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "10", "5x", "-5m"])
def test_bad_short_durations_are_refused(text: str) -> None:
    """Anything else is refused with a hint."""
    with pytest.raises(InvalidInput):
        parse_short_duration(text)


def test_iso_rendering_round_trips() -> None:
    """Rendering then parsing gives the same duration."""
    for value in (timedelta(seconds=20), timedelta(hours=4), timedelta(days=1, minutes=1)):
        assert parse_iso_duration(to_iso_duration(value)) == value
    assert humanize(timedelta(minutes=90)) == "1h30m"


def test_control_characters_are_escaped_not_dropped() -> None:
    """Newlines, ESC and bidi overrides become visible escapes; nothing is silently lost."""
    raw = "fix db\nINFO fake log line\x1b[31m red \u202e"
    escaped = escape_controls(raw)
    assert "\n" not in escaped
    assert "\x1b" not in escaped
    assert "\u202e" not in escaped
    assert "\\n" in escaped
    assert "\\x1b" in escaped
    assert "\\u202e" in escaped


def test_clean_text_rules() -> None:
    """Required text must not be blank; length is limited; optional blank becomes None."""
    with pytest.raises(InvalidInput):
        clean_text("   ", field="justification", max_length=10, required=True)
    with pytest.raises(InvalidInput, match="maximum is 10"):
        clean_text("x" * 11, field="justification", max_length=10, required=True)
    assert clean_text("  ", field="ticket", max_length=10, required=False) is None
    assert clean_text(" ok ", field="ticket", max_length=10, required=False) == "ok"
