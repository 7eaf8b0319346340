"""Elevation history: hours elevated, and the "always on" report (habitual elevation).

Pure functions: no I/O, no clock reads. Every time is an aware ``datetime`` passed in by the
caller; results are in UTC. Windows are half-open, ``[since, until)``.

**Elevated time.** A grant counts from ``not_before`` until it ended (``ended_at``) or its window
closed (``not_after``), whichever is first. Only grants that were really active count: states
``active``, ``revoking``, ``revoke_failed`` and ``revoked``. A ``provisioning`` or ``failed``
grant counts nothing. A person's grants of one role are joined before counting, so two
overlapping grants (on two targets, say) count the shared hours once.

**Working hours.** ``reports.always_on.start`` to ``end`` local time in
``reports.always_on.timezone``, on the ``workdays`` (1 = Monday … 7 = Sunday). Each local
calendar day is computed on its own, so across a daylight-saving change the working day is still
09:00-17:00 on the wall clock (8 hours in Europe/Berlin, whose clocks change at 02:00/03:00).
If a start or end time does not exist that day (the clocks jump over it) it is the moment the
clocks jump, i.e. the first instant at which the local clock reads that time or later; if it
occurs twice (the clocks go back) the first occurrence counts. A day the zone skips entirely
has no working hours.

**Always on.** Over the window ``[now - window, now)``, for each requester and role:
``coverage = (working hours during which the requester held the role) / (working hours in the
window)``. The requester is listed when ``coverage ≥ threshold``. With the defaults (14 days,
Monday to Friday 09:00-17:00, threshold 0.5): someone elevated for half or more of the last ten
working days' office hours is listed. Elevation outside working hours (nights, weekends) neither
helps nor hurts. A window with no working hours lists nobody.
"""

from __future__ import annotations

import zoneinfo
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING

from keyturn.domain.model import Grant, GrantStatus

if TYPE_CHECKING:
    from keyturn.config import AlwaysOnConfig

ELEVATED_STATES = frozenset(
    {GrantStatus.ACTIVE, GrantStatus.REVOKING, GrantStatus.REVOKE_FAILED, GrantStatus.REVOKED}
)
"""Grant states whose grant held its privilege at some point (and so counts as elevated)."""

_HOUR = timedelta(hours=1)
_ONE_DAY = timedelta(days=1)


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got {value!r}")


@dataclass(frozen=True, order=True)
class Interval:
    """A half-open span of time ``[start, end)``; both aware, stored in UTC; may be empty.

    Raises:
        ValueError: a naive datetime, or ``end`` before ``start``.
    """

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        _require_aware("start", self.start)
        _require_aware("end", self.end)
        if self.end < self.start:
            raise ValueError(f"interval ends ({self.end}) before it starts ({self.start})")
        object.__setattr__(self, "start", self.start.astimezone(UTC))
        object.__setattr__(self, "end", self.end.astimezone(UTC))

    @property
    def duration(self) -> timedelta:
        """``end - start``."""
        return self.end - self.start


def elevated_interval(grant: Grant) -> Interval | None:
    """When ``grant`` held its privilege, or None if it never did.

    ``[not_before, min(ended_at, not_after))``, with ``not_after`` when ``ended_at`` is None (an
    active grant; clip it with the window). None for states outside :data:`ELEVATED_STATES`
    (``provisioning``, ``failed``) and for a grant that ended before it began.
    """
    if grant.status not in ELEVATED_STATES:
        return None
    end = grant.not_after if grant.ended_at is None else min(grant.ended_at, grant.not_after)
    if end <= grant.not_before:
        return None
    return Interval(grant.not_before, end)


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """The union of ``intervals``: disjoint, non-empty, sorted by start.

    Overlapping and touching intervals (one ends where the next starts) become one.
    """
    merged: list[Interval] = []
    for item in sorted(i for i in intervals if i.end > i.start):
        if merged and item.start <= merged[-1].end:
            if item.end > merged[-1].end:
                merged[-1] = Interval(merged[-1].start, item.end)
        else:
            merged.append(item)
    return merged


def intersect(a: Iterable[Interval], b: Iterable[Interval]) -> list[Interval]:
    """The time covered by both ``a`` and ``b`` (each merged first): disjoint, sorted."""
    left, right = merge(a), merge(b)
    out: list[Interval] = []
    i = j = 0
    while i < len(left) and j < len(right):
        start = max(left[i].start, right[j].start)
        end = min(left[i].end, right[j].end)
        if start < end:
            out.append(Interval(start, end))
        if left[i].end <= right[j].end:
            i += 1
        else:
            j += 1
    return out


def _window(since: datetime, until: datetime) -> Interval:
    try:
        return Interval(since, until)
    except ValueError as exc:
        raise ValueError(f"bad window [{since}, {until}): {exc}") from exc


def _total(intervals: Iterable[Interval]) -> timedelta:
    return sum((i.duration for i in merge(intervals)), timedelta(0))


def hours_elevated(intervals: Iterable[Interval], *, since: datetime, until: datetime) -> float:
    """Hours (float) covered by the union of ``intervals`` within ``[since, until)``.

    Overlapping intervals count once. Feed it :func:`elevated_interval` of a requester's grants
    for the ``history.hours_elevated_7d`` fact (``since = now - 7 days``, ``until = now``).

    Raises:
        ValueError: naive ``since``/``until``, or ``until`` before ``since``.
    """
    return _total(intersect(intervals, [_window(since, until)])) / _HOUR


def _first_reading(day: date, wall: time, zone: zoneinfo.ZoneInfo) -> datetime:
    """The first instant (UTC) at which the clock in ``zone`` reads ``wall`` or later on ``day``.

    An ordinary or repeated wall time gives its (first) instant, PEP 495 ``fold=0``. A wall time
    the clocks jump over gives the instant of the jump, found by bisection to the microsecond.
    """
    local = datetime.combine(day, wall, tzinfo=zone)
    before_jump = local.astimezone(UTC)  # fold=0: read with the offset before a jump
    if before_jump.astimezone(zone).replace(tzinfo=None) == local.replace(tzinfo=None):
        return before_jump
    low = local.replace(fold=1).astimezone(UTC)  # the offset after the jump: before the jump
    high = before_jump  # a reading after the jump
    offset_after = high.astimezone(zone).utcoffset()
    while high - low > timedelta(microseconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == offset_after:
            high = middle
        else:
            low = middle
    return high


def working_hours(config: AlwaysOnConfig, *, since: datetime, until: datetime) -> list[Interval]:
    """The working-hour intervals within ``[since, until)``: one per local working day, sorted.

    Each is ``[start, end)`` of one local calendar day in ``config.timezone`` on a
    ``config.workdays`` weekday, converted to UTC and clipped to the window; empty ones are
    left out. Wall times the clocks skip or repeat are resolved as the module docstring says.

    Raises:
        ValueError: naive ``since``/``until``, or ``until`` before ``since``.
    """
    window = _window(since, until)
    zone = zoneinfo.ZoneInfo(config.timezone)
    day = window.start.astimezone(zone).date() - _ONE_DAY
    last = window.end.astimezone(zone).date() + _ONE_DAY
    out: list[Interval] = []
    while day <= last:
        if day.isoweekday() in config.workdays:
            start = max(_first_reading(day, config.start, zone), window.start)
            end = min(_first_reading(day, config.end, zone), window.end)
            if start < end:
                out.append(Interval(start, end))
        day += _ONE_DAY
    return out


@dataclass(frozen=True)
class AlwaysOnRow:
    """One requester-role pair whose elevation covers at least the threshold of working hours.

    Attributes:
        user_id: the requester.
        role: the role they held.
        coverage: elevated working hours / working hours in the window, 0.0 to 1.0.
        elevated_working_hours: working hours (float) during which they held the role.
        working_hours: working hours (float) in the window; the same for every row.
        days_elevated: working days on which they held the role at some working hour.
        grants: their grants of the role that held it at some time in the window.
    """

    user_id: str
    role: str
    coverage: float
    elevated_working_hours: float
    working_hours: float
    days_elevated: int
    grants: int


def _elevations_by_pair(
    grants: Iterable[Grant], window: Interval
) -> dict[tuple[str, str], list[Interval]]:
    """Each (user_id, role)'s elevated intervals that overlap ``window``, one per grant."""
    pairs: dict[tuple[str, str], list[Interval]] = defaultdict(list)
    for grant in grants:
        interval = elevated_interval(grant)
        if interval is not None and interval.start < window.end and window.start < interval.end:
            pairs[(grant.user_id, grant.role)].append(interval)
    return pairs


def _row(
    pair: tuple[str, str], elevations: list[Interval], work: list[Interval], total: timedelta
) -> AlwaysOnRow:
    covered = intersect(elevations, work)
    covered_time = _total(covered)
    days = sum(1 for day in work if intersect([day], covered))
    return AlwaysOnRow(
        user_id=pair[0],
        role=pair[1],
        coverage=covered_time / total,
        elevated_working_hours=covered_time / _HOUR,
        working_hours=total / _HOUR,
        days_elevated=days,
        grants=len(elevations),
    )


def always_on(
    grants: Iterable[Grant], config: AlwaysOnConfig, *, now: datetime
) -> list[AlwaysOnRow]:
    """Requester-role pairs elevated for at least ``config.threshold`` of the working hours.

    The window is ``[now - config.window, now)``; the definition is in the module docstring.
    Rows are sorted by coverage (highest first), then user id, then role. Coverage is computed
    from exact time spans (microseconds), so a coverage equal to the threshold is listed.

    Returns:
        The listed rows; an empty list when the window holds no working hours.

    Raises:
        ValueError: ``now`` is naive.
    """
    window = _window(now - config.window, now)
    work = working_hours(config, since=window.start, until=window.end)
    total = _total(work)
    if total <= timedelta(0):
        return []
    rows = [
        _row(pair, elevations, work, total)
        for pair, elevations in _elevations_by_pair(grants, window).items()
    ]
    listed = [row for row in rows if row.coverage >= config.threshold]
    return sorted(listed, key=lambda r: (-r.coverage, r.user_id, r.role))
