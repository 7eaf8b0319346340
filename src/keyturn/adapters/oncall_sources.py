"""On-call sources: reading iCalendar exports and expanding schedules into shifts.

Two kinds of source feed :class:`keyturn.service.oncall.OnCallSchedules`:

* an iCalendar file or ``http(s)://`` URL (RFC 5545; the export format of PagerDuty, Opsgenie
  and most rota tools), read by :func:`read_source` and expanded by :func:`ical_shifts`;
* a YAML rotation from the configuration (:class:`keyturn.config.RotationConfig`), expanded by
  :func:`rotation_shifts`.

Both produce :class:`Shift` values: a half-open UTC interval ``[start, end)`` and the names
(e-mail addresses or user ids) of the people on call in it. Names are matched to users later.

Every failure -- unreadable, too large, malformed, unknown time zone -- is an
:class:`OnCallSourceError`; library errors are translated here (``raise ... from exc``).

Rules for the parts of RFC 5545 that leave room for choice:

* **Who is on call.** Each event's ``ATTENDEE`` values (§3.8.4.1), ``mailto:`` removed, except
  attendees with ``PARTSTAT=DECLINED``. An event with no ``ATTENDEE`` at all names the people in
  its ``SUMMARY`` (§3.8.1.12): every e-mail address found in it (``On call: alice@example.com``),
  or, if it holds none, the whole trimmed summary taken as a user id.
* **Cancelled events** (``STATUS:CANCELLED``, §3.8.1.11) put nobody on call.
* **All-day events** (``VALUE=DATE``) and **floating times** (§3.3.5 form 1, no ``TZID``, no
  ``Z``) are read in the calendar's ``X-WR-TIMEZONE`` if it has one, else in UTC: an all-day
  event runs from local midnight to local midnight.
* **Time zones.** A ``TZID`` must be defined by a ``VTIMEZONE`` in the file or be a zone the
  system knows (IANA, or a Windows name icalendar maps). An unknown ``TZID`` is an error: the
  icalendar library would otherwise read such times as floating, and silently ignore an
  ``EXDATE`` in that zone.
* **Strictness.** A property icalendar could not parse makes the whole file malformed (it would
  otherwise be dropped, e.g. a broken ``ATTENDEE`` could hand the shift to the ``SUMMARY``).
"""

from __future__ import annotations

import re
import time as monotonic_time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx
import icalendar
import recurring_ical_events
from icalendar.timezone import tzp

from keyturn.config import RotationConfig
from keyturn.domain.errors import KeyturnError
from keyturn.domain.text import escape_controls

MAX_SHIFTS = 10_000
"""Most shifts (occurrences) one source may have in the window; more is refused as hostile."""

MAX_REDIRECTS = 5
"""Most HTTP redirects followed when fetching a calendar URL."""

_EMAIL = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")
_MAILTO = "mailto:"


class OnCallSourceError(KeyturnError):
    """An on-call source could not be read or understood.

    ``message`` is one line, safe to show in ``/readyz`` and logs: a URL appears as scheme, host
    and path only (never credentials or the query string). Never leaves
    :class:`~keyturn.service.oncall.OnCallSchedules`, which records it and fails closed.
    """


@dataclass(frozen=True)
class Shift:
    """People on call from ``start`` (inclusive) to ``end`` (exclusive), both aware UTC.

    ``people`` are the names as the source gives them (e-mail addresses or user ids), in order,
    without duplicates; they are matched to users by ``KeyturnConfig.users_named``.
    """

    start: datetime
    end: datetime
    people: tuple[str, ...]


# --- reading ------------------------------------------------------------------------------------


def read_source(
    ical: str, *, resolve: Callable[[str], Path], timeout: timedelta, max_bytes: int
) -> bytes:
    """The raw bytes of an iCalendar source: a file path or an ``http(s)://`` URL.

    Args:
        ical: ``ScheduleConfig.ical``: a path (passed through ``resolve``, e.g.
            ``LoadedConfig.resolve``) or an ``http://``/``https://`` URL.
        resolve: turns a configured path into a file path (relative to the configuration).
        timeout: for a URL, the limit on connecting and on each read, and on the whole download.
        max_bytes: the largest accepted source, in bytes.

    Raises:
        OnCallSourceError: missing or unreadable file; over ``max_bytes`` bytes; HTTP status
            other than 2xx; redirect to another scheme, or from https to http; network error or
            timeout.
    """
    if "://" in ical:
        return _fetch(ical, timeout=timeout, max_bytes=max_bytes)
    path = resolve(ical)
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OnCallSourceError(f"cannot read {path}: {reason}") from exc
    if len(data) > max_bytes:
        raise OnCallSourceError(f"{path} is over max_bytes ({max_bytes} bytes)")
    return data


def describe_url(url: str) -> str:
    """``scheme://host[:port]`` of a URL: no user info, path, query or fragment -- private feed
    URLs (PagerDuty, Opsgenie) carry their secret in the path (safe to log)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return escape_controls(f"{parts.scheme}://{host}")


def _fetch(url: str, *, timeout: timedelta, max_bytes: int) -> bytes:
    seconds = timeout.total_seconds()
    deadline = monotonic_time.monotonic() + seconds
    where = describe_url(url)
    headers = {"Accept": "text/calendar", "Accept-Encoding": "identity"}
    try:
        with httpx.Client(timeout=seconds, follow_redirects=False, headers=headers) as client:
            for _hop in range(MAX_REDIRECTS + 1):
                with client.stream("GET", url) as response:
                    if not response.is_redirect:
                        return _body(response, where, max_bytes=max_bytes, deadline=deadline)
                    url = _redirect_target(response, where)
                    where = describe_url(url)
    except httpx.TimeoutException as exc:
        raise OnCallSourceError(f"{where}: timed out after {seconds:g} s") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise OnCallSourceError(f"{where}: cannot fetch ({type(exc).__name__})") from exc
    raise OnCallSourceError(f"{where}: more than {MAX_REDIRECTS} redirects")


def _redirect_target(response: httpx.Response, where: str) -> str:
    target = response.url.join(response.headers["Location"])
    if target.scheme not in ("http", "https"):
        raise OnCallSourceError(f"{where}: redirect to a {target.scheme!r} URL refused")
    if response.url.scheme == "https" and target.scheme == "http":
        raise OnCallSourceError(f"{where}: redirect from https to http refused")
    return str(target)


def _body(response: httpx.Response, where: str, *, max_bytes: int, deadline: float) -> bytes:
    if not response.is_success:
        raise OnCallSourceError(f"{where}: HTTP {response.status_code}")
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise OnCallSourceError(f"{where}: over max_bytes ({max_bytes} bytes)")
    data = bytearray()
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) > max_bytes:
            raise OnCallSourceError(f"{where}: over max_bytes ({max_bytes} bytes)")
        if monotonic_time.monotonic() > deadline:
            raise OnCallSourceError(f"{where}: timed out (the download took too long)")
    return bytes(data)


# --- iCalendar ----------------------------------------------------------------------------------


def ical_shifts(data: bytes, *, start: datetime, end: datetime) -> list[Shift]:
    """The shifts of an iCalendar file that overlap ``[start, end)``, sorted by start.

    Expands ``RRULE``/``RDATE``, removes ``EXDATE`` and applies ``RECURRENCE-ID`` overrides
    (RFC 5545 §3.8.5, via recurring-ical-events); resolves ``TZID`` with the file's
    ``VTIMEZONE`` components (§3.6.5) or the system's zone database. The module docstring gives
    the rules for attendees, summaries, all-day events and floating times.

    Args:
        data: the iCalendar text (UTF-8).
        start: window start, aware.
        end: window end, aware.

    Returns:
        Every shift that overlaps the window, whole (not cut at the window's edges), with aware
        UTC bounds; empty ones (end ≤ start) are left out.

    Raises:
        OnCallSourceError: not an iCalendar object, malformed content, an unknown time zone, or
            more than :data:`MAX_SHIFTS` occurrences in the window.
    """
    calendar = _parse(data)
    zone = _calendar_zone(calendar)
    _check_time_zones(calendar)
    _check_frequencies(calendar)
    shifts = []
    for event, begin, finish in _occurrences(calendar, zone, start, end):
        if str(event.get("STATUS", "")).upper() == "CANCELLED":
            continue
        if begin < end and finish > start and finish > begin:
            shifts.append(Shift(begin, finish, _people(event)))
    return sorted(shifts, key=lambda s: (s.start, s.end))


def _parse(data: bytes) -> icalendar.Calendar:
    try:
        calendar = icalendar.Calendar.from_ical(data)
    except ValueError as exc:  # also UnicodeDecodeError
        raise OnCallSourceError(f"malformed iCalendar: {_one_line(exc)}") from exc
    if not isinstance(calendar, icalendar.Calendar):
        raise OnCallSourceError("malformed iCalendar: the file holds no VCALENDAR object")
    for component in calendar.walk():
        for prop, problem in component.errors:
            where = f"{component.name} {prop}" if prop else str(component.name)
            raise OnCallSourceError(f"malformed iCalendar: {where}: {_one_line(problem)}")
    for event in calendar.walk("VEVENT"):
        if "DTSTART" not in event:
            raise OnCallSourceError("malformed iCalendar: a VEVENT has no DTSTART")
    return calendar


def _calendar_zone(calendar: icalendar.Calendar) -> tzinfo:
    name = calendar.get("X-WR-TIMEZONE")
    if name is None:
        return UTC
    zone = tzp.timezone(str(name))
    if zone is None:
        raise OnCallSourceError(f"unknown time zone {str(name)!r} in X-WR-TIMEZONE")
    return zone


def _check_time_zones(calendar: icalendar.Calendar) -> None:
    for tzid in sorted(calendar.get_missing_tzids()):
        if tzp.timezone(tzid) is None:
            raise OnCallSourceError(f"unknown time zone {tzid!r} (TZID without VTIMEZONE)")


def _check_frequencies(calendar: icalendar.Calendar) -> None:
    """Refuse sub-hourly recurrences: expanding them from an old ``DTSTART`` up to now costs
    minutes of CPU (an on-call shift is hours long; such a rule is a mistake or an attack)."""
    for event in calendar.walk("VEVENT"):
        rules = event.get("RRULE")
        for rule in rules if isinstance(rules, list) else [rules]:
            if rule is None:
                continue
            freq = [str(f).upper() for f in rule.get("FREQ", [])]
            if any(f in ("SECONDLY", "MINUTELY") for f in freq):
                raise OnCallSourceError(f"RRULE FREQ={freq[0]} is refused (sub-hourly shifts)")


def _occurrences(
    calendar: icalendar.Calendar, zone: tzinfo, start: datetime, end: datetime
) -> Iterator[tuple[icalendar.Event, datetime, datetime]]:
    """Events overlapping the window with their UTC bounds, in start order (all-day ones may be
    a day out of order, hence the slack)."""
    stop = end + timedelta(days=1)
    try:
        for count, event in enumerate(recurring_ical_events.of(calendar).after(start)):
            if count >= MAX_SHIFTS:
                raise OnCallSourceError(f"more than {MAX_SHIFTS} shifts in the window")
            if not isinstance(event, icalendar.Event):
                continue
            begin = _instant(event.start, zone)
            if begin >= stop:
                return
            yield event, begin, _instant(event.end, zone)
    except (ValueError, KeyError, OverflowError) as exc:  # library errors, incl. unknown zones
        raise OnCallSourceError(f"malformed iCalendar: {_one_line(exc)}") from exc


def _instant(value: date | datetime, zone: tzinfo) -> datetime:
    """A DATE as local midnight in ``zone``; a floating DATE-TIME in ``zone``; then UTC."""
    if not isinstance(value, datetime):
        value = datetime.combine(value, time(0), tzinfo=zone)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(UTC)


def _people(event: icalendar.Event) -> tuple[str, ...]:
    attendees = event.get("ATTENDEE")
    if attendees is None:
        summary = str(event.get("SUMMARY", "")).strip()
        found = _EMAIL.findall(summary)
        names = found or ([summary] if summary else [])
    else:
        listed = attendees if isinstance(attendees, list) else [attendees]
        names = [
            _without_mailto(str(a))
            for a in listed
            if str(getattr(a, "params", {}).get("PARTSTAT", "")).upper() != "DECLINED"
        ]
    return tuple(dict.fromkeys(n for n in names if n))


def _without_mailto(address: str) -> str:
    value = address.strip()
    return value[len(_MAILTO) :].strip() if value.lower().startswith(_MAILTO) else value


def _one_line(problem: object) -> str:
    """A library's error text as one short line with control characters escaped."""
    text = escape_controls(" ".join(str(problem).split()))
    return text if len(text) <= 200 else text[:197] + "..."


# --- rotations ----------------------------------------------------------------------------------


def rotation_shifts(rotation: RotationConfig, *, start: datetime, end: datetime) -> list[Shift]:
    """The shifts of a YAML rotation that overlap ``[start, end)``, sorted by start.

    Shift ``k`` (k = 0, 1, …) starts at the wall-clock time ``rotation.start + k * shift`` in
    ``rotation.timezone`` and belongs to ``people[k % len(people)]``; nobody is on call before
    ``rotation.start``. Wall-clock times are turned into instants as RFC 5545 §3.3.5 does (and
    as recurring-ical-events does for iCalendar sources): a time in a daylight-saving gap uses
    the UTC offset before the gap (02:30 on a spring-forward night becomes 03:30 summer time);
    a time that occurs twice means the first occurrence. Hand-overs never go backwards in time:
    a shift the clock change leaves empty is dropped.

    Args:
        rotation: the rotation from the configuration.
        start: window start, aware.
        end: window end, aware.

    Raises:
        OnCallSourceError: ``shift`` is not positive, or the window holds more than
            :data:`MAX_SHIFTS` shifts.
    """
    if rotation.shift <= timedelta(0):
        raise OnCallSourceError("a rotation's shift must be longer than zero")
    zone = ZoneInfo(rotation.timezone)
    # One day of slack: UTC offsets change by less than a day, so shift k starts before `start`.
    local_from = start.astimezone(zone).replace(tzinfo=None) - timedelta(days=1)
    k = max(0, (local_from - rotation.start) // rotation.shift)
    begin = _wall_clock(rotation.start + k * rotation.shift, zone)
    shifts: list[Shift] = []
    for _step in range(MAX_SHIFTS + 1):
        if begin >= end:
            return shifts
        finish = max(begin, _wall_clock(rotation.start + (k + 1) * rotation.shift, zone))
        if finish > start and finish > begin:
            shifts.append(Shift(begin, finish, (rotation.people[k % len(rotation.people)],)))
        begin, k = finish, k + 1
    raise OnCallSourceError(f"more than {MAX_SHIFTS} shifts in the window")


def _wall_clock(local: datetime, zone: ZoneInfo) -> datetime:
    """A naive wall-clock time in ``zone`` as aware UTC (``fold=0``: see rotation_shifts)."""
    return local.replace(tzinfo=zone, fold=0).astimezone(UTC)
