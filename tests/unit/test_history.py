"""Elevation history: elevated intervals, hours elevated, working hours, the always-on report."""

from __future__ import annotations

import itertools
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyturn.config import AlwaysOnConfig
from keyturn.domain.history import (
    AlwaysOnRow,
    Interval,
    always_on,
    elevated_interval,
    hours_elevated,
    intersect,
    merge,
    working_hours,
)
from keyturn.domain.model import Grant, GrantStatus

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
ALL_WEEK = (1, 2, 3, 4, 5, 6, 7)
# Monday 2026-06-15 00:00 UTC: a 14-day window holds Mon 1 June .. Fri 12 June, 10 working days.
NOW = datetime(2026, 6, 15, tzinfo=UTC)
WORKDAYS_IN_WINDOW = [date(2026, 6, d) for d in (1, 2, 3, 4, 5, 8, 9, 10, 11, 12)]
_ids = itertools.count()


def at(day: date, hour: int, minute: int = 0, zone: zoneinfo.ZoneInfo | None = None) -> datetime:
    """``day`` at ``hour:minute`` in ``zone`` (UTC when None), as a UTC datetime."""
    return datetime.combine(day, time(hour, minute), tzinfo=zone or UTC).astimezone(UTC)


def grant(
    start: datetime,
    end: datetime,
    *,
    user: str = "alice",
    role: str = "db-admin",
    status: GrantStatus = GrantStatus.REVOKED,
    ended_at: datetime | None = None,
) -> Grant:
    """A grant of ``role`` to ``user`` for ``[start, end)``; ``ended_at`` defaults to ``end``
    for ended states and to None for active ones."""
    if ended_at is None and status is not GrantStatus.ACTIVE:
        ended_at = end
    return Grant(
        id=f"g{next(_ids)}",
        request_id="r",
        user_id=user,
        role=role,
        target="db-1",
        provider="ssh",
        status=status,
        not_before=start,
        not_after=end,
        created_at=start,
        updated_at=start,
        ended_at=ended_at,
    )


def every_workday(
    hours: tuple[int, int] = (9, 17),
    *,
    user: str = "alice",
    role: str = "db-admin",
    status: GrantStatus = GrantStatus.REVOKED,
) -> list[Grant]:
    """One grant per working day in the window, ``hours`` UTC."""
    first, last = hours
    return [
        grant(at(d, first), at(d, last), user=user, role=role, status=status)
        for d in WORKDAYS_IN_WINDOW
    ]


def iv(start: datetime, hours: float) -> Interval:
    return Interval(start, start + timedelta(hours=hours))


# --- elevated_interval -----------------------------------------------------------------------

MON = date(2026, 6, 1)


def test_elevated_interval_ends_at_ended_at_when_released_early() -> None:
    """A grant released after 2 h of a 4 h window was elevated for those 2 h only."""
    g = grant(at(MON, 9), at(MON, 13), ended_at=at(MON, 11))
    assert elevated_interval(g) == Interval(at(MON, 9), at(MON, 11))


def test_elevated_interval_ends_at_not_after_when_revoked_late() -> None:
    """A revocation recorded after the window closed does not extend the elevation."""
    g = grant(at(MON, 9), at(MON, 13), ended_at=at(MON, 14))
    assert elevated_interval(g) == Interval(at(MON, 9), at(MON, 13))


@pytest.mark.parametrize("status", [GrantStatus.REVOKING, GrantStatus.REVOKE_FAILED])
def test_elevated_interval_of_a_grant_being_revoked_ends_at_ended_at(status: GrantStatus) -> None:
    g = grant(at(MON, 9), at(MON, 17), status=status, ended_at=at(MON, 10))
    assert elevated_interval(g) == Interval(at(MON, 9), at(MON, 10))


def test_active_grant_runs_to_not_after() -> None:
    g = grant(at(MON, 9), at(MON, 17), status=GrantStatus.ACTIVE)
    assert elevated_interval(g) == Interval(at(MON, 9), at(MON, 17))


@pytest.mark.parametrize("status", [GrantStatus.FAILED, GrantStatus.PROVISIONING])
def test_grant_that_never_became_active_has_no_elevation(status: GrantStatus) -> None:
    g = grant(at(MON, 9), at(MON, 17), status=status)
    assert elevated_interval(g) is None


def test_grant_ended_before_it_began_has_no_elevation() -> None:
    g = grant(at(MON, 9), at(MON, 17), ended_at=at(MON, 9))
    assert elevated_interval(g) is None


# --- Interval, merge, hours_elevated ---------------------------------------------------------


def test_interval_refuses_naive_times_and_reversed_bounds() -> None:
    with pytest.raises(ValueError, match="aware"):
        Interval(datetime(2026, 1, 1), datetime(2026, 1, 2, tzinfo=UTC))  # noqa: DTZ001
    with pytest.raises(ValueError, match="before it starts"):
        Interval(at(MON, 10), at(MON, 9))


def test_interval_is_stored_in_utc() -> None:
    local = datetime(2026, 6, 1, 11, tzinfo=BERLIN)
    interval = Interval(local, local + timedelta(hours=1))
    assert interval.start == at(MON, 9)
    assert interval.start.tzinfo is UTC


def test_merge_joins_overlapping_and_touching_intervals_and_drops_empty_ones() -> None:
    empty = iv(at(MON, 20), 0)
    merged = merge(
        [iv(at(MON, 13), 2), iv(at(MON, 9), 2), iv(at(MON, 10), 1), iv(at(MON, 11), 1), empty]
    )
    assert merged == [Interval(at(MON, 9), at(MON, 12)), Interval(at(MON, 13), at(MON, 15))]


def test_overlapping_grants_count_once() -> None:
    """Two grants 09-13 and 11-17 (say on two targets) are 8 elevated hours, not 10."""
    grants = [grant(at(MON, 9), at(MON, 13)), grant(at(MON, 11), at(MON, 17))]
    intervals = [i for g in grants if (i := elevated_interval(g)) is not None]
    assert hours_elevated(intervals, since=at(MON, 0), until=at(MON, 23)) == 8.0


def test_grant_partially_before_the_window_counts_only_its_part_inside() -> None:
    interval = Interval(at(MON, 6), at(MON, 12))
    assert hours_elevated([interval], since=at(MON, 9), until=at(MON, 23)) == 3.0


def test_active_grant_is_clipped_at_until() -> None:
    """An active grant ending tomorrow counts up to ``until`` (now), not to its not_after."""
    g = grant(at(MON, 9), at(MON, 9) + timedelta(days=1), status=GrantStatus.ACTIVE)
    interval = elevated_interval(g)
    assert interval is not None
    assert hours_elevated([interval], since=at(MON, 0), until=at(MON, 12, 30)) == 3.5


def test_hours_elevated_refuses_a_reversed_window() -> None:
    with pytest.raises(ValueError, match="bad window"):
        hours_elevated([], since=at(MON, 12), until=at(MON, 9))


def test_intersect_keeps_only_shared_time() -> None:
    a = [iv(at(MON, 8), 2), iv(at(MON, 12), 4)]
    b = [iv(at(MON, 9), 4)]
    assert intersect(a, b) == [
        Interval(at(MON, 9), at(MON, 10)),
        Interval(at(MON, 12), at(MON, 13)),
    ]


# --- working_hours ---------------------------------------------------------------------------


def test_working_hours_are_weekdays_nine_to_five_and_clipped_to_the_window() -> None:
    config = AlwaysOnConfig()
    # Friday 5 June 12:00 UTC .. Tuesday 9 June 10:00 UTC.
    got = working_hours(config, since=at(date(2026, 6, 5), 12), until=at(date(2026, 6, 9), 10))
    assert got == [
        Interval(at(date(2026, 6, 5), 12), at(date(2026, 6, 5), 17)),
        Interval(at(date(2026, 6, 8), 9), at(date(2026, 6, 8), 17)),
        Interval(at(date(2026, 6, 9), 9), at(date(2026, 6, 9), 10)),
    ]


@pytest.mark.parametrize(
    ("day", "utc_start_before", "utc_start_after"),
    [(date(2026, 3, 29), 8, 7), (date(2026, 10, 25), 7, 8)],
    ids=["march-spring-forward", "october-fall-back"],
)
def test_berlin_working_day_stays_nine_to_five_local_across_dst(
    day: date, utc_start_before: int, utc_start_after: int
) -> None:
    """The day of the change still has 8 h, 09:00-17:00 local; UTC start shifts by an hour."""
    config = AlwaysOnConfig(timezone="Europe/Berlin", workdays=ALL_WEEK)
    since = at(day - timedelta(days=1), 0, zone=BERLIN)
    got = working_hours(config, since=since, until=at(day + timedelta(days=2), 0, zone=BERLIN))
    assert [i.duration for i in got] == [timedelta(hours=8)] * 3
    assert [i.start.astimezone(BERLIN).time() for i in got] == [time(9)] * 3
    assert got[0].start.hour == utc_start_before
    assert got[1].start.hour == got[2].start.hour == utc_start_after


def test_start_in_a_dst_gap_is_the_moment_the_clocks_jump() -> None:
    """Berlin, 29 March 2026: 02:30 does not exist; the day starts at 03:00 CEST (01:00 UTC)."""
    day = date(2026, 3, 29)
    config = AlwaysOnConfig(timezone="Europe/Berlin", workdays=(7,), start=time(2, 30))
    got = working_hours(config, since=at(day, 0), until=at(day + timedelta(days=1), 0))
    assert got == [Interval(at(day, 1), at(day, 15))]


def test_end_in_a_dst_gap_is_the_moment_the_clocks_jump() -> None:
    day = date(2026, 3, 29)
    config = AlwaysOnConfig(timezone="Europe/Berlin", workdays=(7,), start=time(1), end=time(2, 30))
    got = working_hours(config, since=at(day - timedelta(days=1), 0), until=at(day, 12))
    assert got == [Interval(at(day, 0), at(day, 1))]  # 01:00 CET .. 03:00 CEST: one real hour


def test_repeated_wall_time_uses_its_first_occurrence() -> None:
    """Berlin, 25 October 2026: 02:30 happens twice; the first (CEST, 00:30 UTC) counts."""
    day = date(2026, 10, 25)
    config = AlwaysOnConfig(timezone="Europe/Berlin", workdays=(7,), start=time(2, 30))
    got = working_hours(config, since=at(day - timedelta(days=1), 0), until=at(day, 23))
    assert got == [Interval(at(day, 0, 30), at(day, 16))]


def test_a_skipped_calendar_day_has_no_working_hours() -> None:
    """Samoa skipped Friday 30 December 2011 (UTC-10 → UTC+14)."""
    config = AlwaysOnConfig(timezone="Pacific/Apia", workdays=(5,))
    since = datetime(2011, 12, 25, tzinfo=UTC)
    assert working_hours(config, since=since, until=since + timedelta(days=10)) == []


# --- always_on -------------------------------------------------------------------------------


def test_every_morning_eight_hours_requester_is_listed_and_occasional_one_is_not() -> None:
    """The "Always On" anti-pattern: elevation every working day 09:00-17:00."""
    habitual = every_workday(user="alice")
    occasional = [grant(at(d, 10), at(d, 11), user="bob") for d in WORKDAYS_IN_WINDOW[:2]]
    rows = always_on(habitual + occasional, AlwaysOnConfig(), now=NOW)
    assert rows == [
        AlwaysOnRow(
            user_id="alice",
            role="db-admin",
            coverage=1.0,
            elevated_working_hours=80.0,
            working_hours=80.0,
            days_elevated=10,
            grants=10,
        )
    ]


def test_failed_grants_count_nothing() -> None:
    failed = every_workday(status=GrantStatus.FAILED)
    assert always_on(failed, AlwaysOnConfig(threshold=0.01), now=NOW) == []


def test_weekend_and_night_elevation_does_not_count() -> None:
    saturdays = [date(2026, 6, 6), date(2026, 6, 13)]
    weekend = [grant(at(d, 0), at(d + timedelta(days=2), 0)) for d in saturdays]
    nights = every_workday(hours=(17, 23))
    assert always_on(weekend + nights, AlwaysOnConfig(threshold=0.01), now=NOW) == []


def test_coverage_exactly_at_threshold_is_listed() -> None:
    """5 of 10 full working days is exactly 0.5: listed; one minute less is not."""
    half = every_workday()[:5]
    assert [r.coverage for r in always_on(half, AlwaysOnConfig(threshold=0.5), now=NOW)] == [0.5]
    short = [*half[:4], grant(at(WORKDAYS_IN_WINDOW[4], 9), at(WORKDAYS_IN_WINDOW[4], 16, 59))]
    assert always_on(short, AlwaysOnConfig(threshold=0.5), now=NOW) == []


def test_roles_are_counted_separately() -> None:
    """Mornings as db-admin and afternoons as web-admin are 0.5 each, never 1.0 together."""
    mornings = every_workday(hours=(9, 13), role="db-admin")
    afternoons = every_workday(hours=(13, 17), role="web-admin")
    rows = always_on(mornings + afternoons, AlwaysOnConfig(threshold=0.5), now=NOW)
    assert [(r.role, r.coverage) for r in rows] == [("db-admin", 0.5), ("web-admin", 0.5)]
    assert always_on(mornings + afternoons, AlwaysOnConfig(threshold=0.6), now=NOW) == []


def test_rows_sort_by_coverage_then_user_then_role() -> None:
    grants = (
        every_workday(user="zoe")
        + every_workday(hours=(9, 15), user="bob", role="b")
        + every_workday(hours=(9, 15), user="bob", role="a")
        + every_workday(hours=(9, 15), user="amy")
    )
    rows = always_on(grants, AlwaysOnConfig(threshold=0.5), now=NOW)
    assert [(r.user_id, r.role, r.coverage) for r in rows] == [
        ("zoe", "db-admin", 1.0),
        ("amy", "db-admin", 0.75),
        ("bob", "a", 0.75),
        ("bob", "b", 0.75),
    ]


def test_days_elevated_and_grants_count_only_the_window() -> None:
    """One grant spanning Monday-Wednesday office hours plus one before the window."""
    d = WORKDAYS_IN_WINDOW
    long_grant = grant(at(d[0], 9), at(d[2], 17))
    before = grant(at(d[0] - timedelta(days=3), 9), at(d[0] - timedelta(days=3), 17))
    rows = always_on([long_grant, before], AlwaysOnConfig(threshold=0.3), now=NOW)
    assert [(r.days_elevated, r.grants, r.elevated_working_hours) for r in rows] == [(3, 1, 24.0)]


def test_berlin_grants_nine_to_five_local_across_both_dst_changes_cover_everything() -> None:
    """Daily 09:00-17:00 Berlin grants, every day, over both 2026 changes: coverage 1.0."""
    config = AlwaysOnConfig(timezone="Europe/Berlin", workdays=ALL_WEEK, window=timedelta(days=7))
    for change in (date(2026, 3, 29), date(2026, 10, 25)):
        days = [change + timedelta(days=k) for k in range(-4, 4)]
        grants = [grant(at(d, 9, zone=BERLIN), at(d, 17, zone=BERLIN)) for d in days]
        now = at(change + timedelta(days=3), 23, zone=BERLIN)
        (row,) = always_on(grants, config, now=now)
        assert row.coverage == 1.0
        assert row.working_hours == 7 * 8.0


def test_window_without_working_hours_lists_nobody() -> None:
    sunday_night = datetime(2026, 6, 14, 23, tzinfo=UTC)
    weekend = [grant(at(date(2026, 6, 13), 0), sunday_night)]
    config = AlwaysOnConfig(window=timedelta(days=1), threshold=0.01)
    assert always_on(weekend, config, now=sunday_night) == []


# --- properties ------------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)
instants = st.integers(min_value=0, max_value=60 * 24 * 90).map(lambda m: T0 + timedelta(minutes=m))
intervals = st.builds(
    lambda start, minutes: Interval(start, start + timedelta(minutes=minutes)),
    instants,
    st.integers(min_value=0, max_value=60 * 24 * 5),
)
windows = st.tuples(instants, instants).map(sorted)


@given(st.lists(intervals, max_size=20), windows)
def test_hours_elevated_is_between_zero_and_the_window_length(
    items: list[Interval], window: list[datetime]
) -> None:
    since, until = window
    hours = hours_elevated(items, since=since, until=until)
    assert 0.0 <= hours <= (until - since) / timedelta(hours=1)


@given(st.lists(intervals, max_size=20))
def test_merge_is_idempotent_sorted_disjoint_and_order_free(items: list[Interval]) -> None:
    merged = merge(items)
    assert merge(merged) == merged
    assert merge(reversed(items)) == merged
    assert all(a.end < b.start for a, b in itertools.pairwise(merged))
    assert all(i.end > i.start for i in merged)
    assert sum((i.duration for i in merged), timedelta(0)) <= sum(
        (i.duration for i in items), timedelta(0)
    )


@given(st.lists(intervals, max_size=20), windows)
def test_union_counts_at_least_each_part_and_at_most_their_sum(
    items: list[Interval], window: list[datetime]
) -> None:
    since, until = window
    total = hours_elevated(items, since=since, until=until)
    parts = [hours_elevated([i], since=since, until=until) for i in items]
    assert max(parts, default=0.0) <= total <= sum(parts) + 1e-9


@given(
    st.lists(
        st.tuples(intervals, st.sampled_from(["alice", "bob"]), st.sampled_from(list(GrantStatus))),
        max_size=25,
    ),
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]),
    st.integers(min_value=0, max_value=60 * 24 * 90),
)
def test_coverage_is_a_fraction_and_rows_respect_the_threshold(
    specs: list[tuple[Interval, str, GrantStatus]], zone: str, minutes: int
) -> None:
    grants = [grant(i.start, i.end, user=u, status=s) for i, u, s in specs if i.duration]
    config = AlwaysOnConfig(timezone=zone, threshold=0.25, window=timedelta(days=10))
    now = T0 + timedelta(minutes=minutes)
    rows = always_on(grants, config, now=now)
    work_days = len(working_hours(config, since=now - config.window, until=now))
    for row in rows:
        assert 0.25 <= row.coverage <= 1.0
        assert row.elevated_working_hours <= row.working_hours
        assert 1 <= row.days_elevated <= work_days
        assert row.grants >= 1
    assert [(-r.coverage, r.user_id) for r in rows] == sorted(
        (-r.coverage, r.user_id) for r in rows
    )


@given(windows, st.sampled_from(["Europe/Berlin", "America/New_York", "Asia/Tokyo"]))
def test_unclipped_working_days_last_eight_hours_in_zones_changing_at_night(
    window: list[datetime], zone: str
) -> None:
    since, until = window
    got = working_hours(AlwaysOnConfig(timezone=zone), since=since, until=until)
    assert all(since <= i.start < i.end <= until for i in got)
    assert all(a.end < b.start for a, b in itertools.pairwise(got))
    inner = [i for i in got if since < i.start and i.end < until]
    assert all(i.duration == timedelta(hours=8) for i in inner)
    local_zone = zoneinfo.ZoneInfo(zone)
    assert all(i.start.astimezone(local_zone).isoweekday() <= 5 for i in got)
