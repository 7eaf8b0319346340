"""Durations: ISO 8601 (API, config) and a short human form (CLI).

The API and the configuration take ISO 8601 durations (ISO 8601-1:2019 §5.5.2, the ``PnDTnHnMnS``
form, as also used by XML Schema ``xs:duration``), parsed by pydantic. Calendar units (years,
months, weeks) are refused: a month has no fixed length, and an access window must be exact.

The CLI also accepts the short form ``90s``, ``30m``, ``1h30m``, ``2d`` and converts it to ISO 8601
before it is sent.
"""

from __future__ import annotations

import re
from datetime import timedelta

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from keyturn.domain.errors import InvalidInput

_TIMEDELTA = TypeAdapter(timedelta)
_ISO_RE = re.compile(r"^P(?:\d+D)?(?:T(?=\d)(?:\d+H)?(?:\d+M)?(?:\d+(?:\.\d+)?S)?)?$")
_SHORT_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_iso_duration(text: str) -> timedelta:
    """Parse an ISO 8601 duration such as ``PT30M`` or ``P1DT2H``.

    Args:
        text: the duration; only days, hours, minutes and seconds are accepted.

    Returns:
        The duration as a :class:`~datetime.timedelta` (may be zero; callers check ranges).

    Raises:
        InvalidInput: the text is not an ISO 8601 duration of that form, or is negative.
    """
    candidate = text.strip()
    if candidate in ("P", "PT") or not _ISO_RE.match(candidate):
        raise InvalidInput(
            f"duration {text!r} is not an ISO 8601 duration like 'PT30M' or 'PT1H' "
            "(days, hours, minutes and seconds only)",
            field="duration",
        )
    try:
        return _TIMEDELTA.validate_python(candidate)
    except PydanticValidationError as exc:  # pragma: no cover - the regex already filters
        raise InvalidInput(f"duration {text!r} is not valid", field="duration") from exc


def parse_short_duration(text: str) -> timedelta:
    """Parse a CLI duration: ``45s``, ``30m``, ``1h30m``, ``2d``, or an ISO 8601 duration.

    Raises:
        InvalidInput: the text is neither form.
    """
    candidate = text.strip().lower()
    if candidate.upper().startswith("P"):
        return parse_iso_duration(candidate.upper())
    match = _SHORT_RE.match(candidate)
    if not candidate or match is None:
        raise InvalidInput(
            f"duration {text!r} is not understood; use e.g. '30m', '1h30m', '45s' or 'PT30M'",
            field="duration",
        )
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def to_iso_duration(value: timedelta) -> str:
    """Render a non-negative duration as ISO 8601 (``PT1H30M``; whole seconds)."""
    total = int(value.total_seconds())
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    time_part = "".join(
        f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n
    )
    out = "P" + (f"{days}D" if days else "")
    if time_part:
        out += "T" + time_part
    return out if out != "P" else "PT0S"


def humanize(value: timedelta) -> str:
    """Render a duration for people: ``1h30m``, ``20s``."""
    total = int(value.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n]
    return "".join(parts) or "0s"
