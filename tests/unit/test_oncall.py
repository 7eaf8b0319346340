"""On-call schedules: iCalendar and rotation sources expand into shifts, names resolve to users,
facts hold only for covered targets, and broken or hostile sources fail closed and visibly."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry

from keyturn.adapters import oncall_sources
from keyturn.adapters.oncall_sources import (
    OnCallSourceError,
    Shift,
    ical_shifts,
    read_source,
    rotation_shifts,
)
from keyturn.config import (
    KeyturnConfig,
    RotationConfig,
    ScheduleConfig,
    TargetConfig,
    parse_config,
)
from keyturn.service.oncall import OnCallCollector, OnCallSchedules
from keyturn.testing import FakeClock

BERLIN = ZoneInfo("Europe/Berlin")
EXAMPLE_ICS = Path(__file__).resolve().parents[2] / "examples" / "oncall" / "database.ics"
VTIMEZONE_BERLIN = """BEGIN:VTIMEZONE
TZID:Europe/Berlin
BEGIN:DAYLIGHT
TZOFFSETFROM:+0100
TZOFFSETTO:+0200
TZNAME:CEST
DTSTART:19700329T020000
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU
END:DAYLIGHT
BEGIN:STANDARD
TZOFFSETFROM:+0200
TZOFFSETTO:+0100
TZNAME:CET
DTSTART:19701025T030000
RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU
END:STANDARD
END:VTIMEZONE
"""


# --- builders -----------------------------------------------------------------------------------
def vevent(uid: str, *lines: str) -> str:
    """One VEVENT with a UID, a DTSTAMP and the given content lines."""
    body = "".join(f"{line}\n" for line in lines)
    return f"BEGIN:VEVENT\nUID:{uid}\nDTSTAMP:20260101T000000Z\n{body}END:VEVENT\n"


def calendar(*components: str, header: str = "") -> bytes:
    """A VCALENDAR around the components, with CRLF line ends as RFC 5545 §3.1 wants."""
    text = f"BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//Keyturn tests//EN\n{header}"
    text += "".join(components) + "END:VCALENDAR\n"
    return text.replace("\n", "\r\n").encode()


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """An aware UTC datetime."""
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def wall(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A naive wall-clock datetime (RotationConfig.start; the zone is given separately)."""
    return datetime(year, month, day, hour, minute)  # noqa: DTZ001 -- naive on purpose


def berlin(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """An aware Europe/Berlin wall-clock datetime."""
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


USERS = [
    {"id": "alice", "name": "Alice Martin", "email": "alice@example.com"},
    {"id": "bob", "name": "Bob Okafor", "email": "bob@example.com"},
    {"id": "carol", "name": "Carol Nguyen", "email": "carol@example.com"},
    {"id": "dave", "name": "Dave Kowalski", "email": "dave@example.com"},
]
TARGETS = [
    {"name": "db-1", "labels": {"env": "prod", "service": "postgres"}},
    {"name": "db-2", "labels": {"env": "prod", "service": "postgres"}},
    {"name": "corp-directory", "labels": {"kind": "directory"}},
]


def make_config(
    schedules: list[dict[str, Any]], *, extra_users: tuple[dict[str, Any], ...] = ()
) -> KeyturnConfig:
    """Users alice, bob, carol, dave; targets db-1 and db-2 (labelled service=postgres) and
    corp-directory; these schedules, refresh 5 min, keep_last_good 1 h."""
    data = {
        "version": 1,
        "users": [*USERS, *extra_users],
        "targets": TARGETS,
        "oncall": {"refresh": "PT5M", "keep_last_good": "PT1H", "schedules": schedules},
    }
    return parse_config(data).config


def ical_schedule(name: str = "database", **targets: Any) -> dict[str, Any]:
    """An iCalendar schedule covering ``targets`` (default: db-1 by name)."""
    return {"name": name, "ical": f"{name}.ics", "targets": targets or {"names": ["db-1"]}}


class Sources:
    """``read`` for OnCallSchedules: bytes per schedule name, or an error to raise."""

    def __init__(self, **data: bytes | Exception) -> None:
        self.data: dict[str, bytes | Exception] = dict(data)
        self.calls = 0

    def __call__(self, schedule: ScheduleConfig) -> bytes:
        self.calls += 1
        value = self.data[schedule.name]
        if isinstance(value, Exception):
            raise value
        return value


def schedules_for(
    config: KeyturnConfig, read: Callable[[ScheduleConfig], bytes | None], clock: FakeClock
) -> OnCallSchedules:
    """OnCallSchedules refreshed once."""
    schedules = OnCallSchedules(config, read, clock)
    schedules.refresh()
    return schedules


def target(config: KeyturnConfig, name: str) -> TargetConfig:
    """The configured target with this name."""
    found = config.target(name)
    assert found is not None
    return found


DAILY_ALICE = calendar(
    vevent(
        "daily",
        "DTSTART:20260301T000000Z",
        "DTEND:20260302T000000Z",
        "RRULE:FREQ=DAILY",
        "SUMMARY:On Call - Alice Martin - Database",
        "ATTENDEE;CN=Alice Martin:mailto:alice@example.com",
    )
)


# --- iCalendar expansion ------------------------------------------------------------------------
def test_weekly_rotation_in_berlin_hands_over_at_local_nine_on_both_sides_of_dst() -> None:
    """Weekly RRULEs with TZID and VTIMEZONE: hand-overs stay at 09:00 Berlin time."""
    data = calendar(
        VTIMEZONE_BERLIN,
        vevent(
            "alice",
            "DTSTART;TZID=Europe/Berlin:20260316T090000",
            "DTEND;TZID=Europe/Berlin:20260323T090000",
            "RRULE:FREQ=WEEKLY;INTERVAL=2",
            "ATTENDEE:mailto:alice@example.com",
        ),
        vevent(
            "bob",
            "DTSTART;TZID=Europe/Berlin:20260323T090000",
            "DTEND;TZID=Europe/Berlin:20260330T090000",
            "RRULE:FREQ=WEEKLY;INTERVAL=2",
            "ATTENDEE:mailto:bob@example.com",
        ),
    )
    shifts = ical_shifts(data, start=utc(2026, 3, 20), end=utc(2026, 4, 10))
    assert [(s.start, s.people) for s in shifts] == [
        (berlin(2026, 3, 16, 9), ("alice@example.com",)),
        (berlin(2026, 3, 23, 9), ("bob@example.com",)),
        (berlin(2026, 3, 30, 9), ("alice@example.com",)),
        (berlin(2026, 4, 6, 9), ("bob@example.com",)),
    ]
    assert shifts[1].end == utc(2026, 3, 30, 7)  # 09:00 CEST, one hour earlier in UTC
    assert all(s.start.tzinfo is UTC and s.end.tzinfo is UTC for s in shifts)


def test_recurrence_id_override_replaces_one_occurrence() -> None:
    """RFC 5545 §3.8.4.4: an override with RECURRENCE-ID swaps the person and times of one day."""
    data = calendar(
        vevent(
            "series",
            "DTSTART:20260301T080000Z",
            "DTEND:20260302T080000Z",
            "RRULE:FREQ=DAILY",
            "ATTENDEE:mailto:alice@example.com",
        ),
        vevent(
            "series",
            "RECURRENCE-ID:20260303T080000Z",
            "DTSTART:20260303T120000Z",
            "DTEND:20260304T080000Z",
            "ATTENDEE:mailto:bob@example.com",
        ),
    )
    shifts = ical_shifts(data, start=utc(2026, 3, 2, 12), end=utc(2026, 3, 4, 12))
    assert [(s.start, s.end, s.people) for s in shifts] == [
        (utc(2026, 3, 2, 8), utc(2026, 3, 3, 8), ("alice@example.com",)),
        (utc(2026, 3, 3, 12), utc(2026, 3, 4, 8), ("bob@example.com",)),
        (utc(2026, 3, 4, 8), utc(2026, 3, 5, 8), ("alice@example.com",)),
    ]


def test_exdate_removes_an_occurrence() -> None:
    """RFC 5545 §3.8.5.1: the excluded day has no shift."""
    data = calendar(
        vevent(
            "series",
            "DTSTART:20260301T000000Z",
            "DTEND:20260302T000000Z",
            "RRULE:FREQ=DAILY",
            "EXDATE:20260303T000000Z",
            "ATTENDEE:mailto:alice@example.com",
        )
    )
    shifts = ical_shifts(data, start=utc(2026, 3, 2), end=utc(2026, 3, 5))
    assert [s.start for s in shifts] == [utc(2026, 3, 2), utc(2026, 3, 4)]


def test_all_day_events_run_midnight_to_midnight_utc_without_a_calendar_zone() -> None:
    """VALUE=DATE without X-WR-TIMEZONE: a UTC day; a missing DTEND means one day (§3.6.1)."""
    data = calendar(vevent("day", "DTSTART;VALUE=DATE:20260305", "SUMMARY:carol@example.com"))
    [shift] = ical_shifts(data, start=utc(2026, 3, 1), end=utc(2026, 3, 10))
    assert (shift.start, shift.end, shift.people) == (
        utc(2026, 3, 5),
        utc(2026, 3, 6),
        ("carol@example.com",),
    )


def test_all_day_and_floating_times_are_read_in_x_wr_timezone() -> None:
    """With X-WR-TIMEZONE the day and floating times are local to that zone."""
    data = calendar(
        vevent("day", "DTSTART;VALUE=DATE:20260305", "DTEND;VALUE=DATE:20260306", "SUMMARY:bob"),
        vevent("floating", "DTSTART:20260307T090000", "DTEND:20260307T170000", "SUMMARY:dave"),
        header="X-WR-TIMEZONE:Europe/Berlin\n",
    )
    shifts = ical_shifts(data, start=utc(2026, 3, 1), end=utc(2026, 3, 10))
    assert [(s.start, s.end, s.people) for s in shifts] == [
        (berlin(2026, 3, 5), berlin(2026, 3, 6), ("bob",)),
        (berlin(2026, 3, 7, 9), berlin(2026, 3, 7, 17), ("dave",)),
    ]


@pytest.mark.parametrize(
    ("summary", "people"),
    [
        ("On call: Alice@Example.com", ("Alice@Example.com",)),
        (
            "Primary bob@example.com, secondary carol@example.com.",
            ("bob@example.com", "carol@example.com"),
        ),
        ("  dave  ", ("dave",)),
        ("On Call - Alice Martin - Database", ("On Call - Alice Martin - Database",)),
    ],
)
def test_summary_names_people_when_there_is_no_attendee(
    summary: str, people: tuple[str, ...]
) -> None:
    """Every e-mail address in SUMMARY; without one, the whole trimmed SUMMARY as an id."""
    data = calendar(
        vevent("e", "DTSTART:20260301T000000Z", "DTEND:20260302T000000Z", f"SUMMARY:{summary}")
    )
    [shift] = ical_shifts(data, start=utc(2026, 3, 1), end=utc(2026, 3, 2))
    assert shift.people == people


def test_attendees_win_over_summary_and_declined_or_cancelled_count_for_nobody() -> None:
    """ATTENDEE (mailto stripped, any case) beats SUMMARY; PARTSTAT=DECLINED and
    STATUS:CANCELLED put nobody on call."""
    data = calendar(
        vevent(
            "a",
            "DTSTART:20260301T000000Z",
            "DTEND:20260302T000000Z",
            "SUMMARY:carol@example.com",
            "ATTENDEE;PARTSTAT=DECLINED:mailto:bob@example.com",
            "ATTENDEE;CN=Alice:MAILTO:Alice@Example.COM",
        ),
        vevent(
            "b",
            "DTSTART:20260302T000000Z",
            "DTEND:20260303T000000Z",
            "STATUS:CANCELLED",
            "ATTENDEE:mailto:dave@example.com",
        ),
    )
    shifts = ical_shifts(data, start=utc(2026, 3, 1), end=utc(2026, 3, 3))
    assert [s.people for s in shifts] == [("Alice@Example.COM",)]


# --- DST ----------------------------------------------------------------------------------------
DST_DAYS = [
    pytest.param(wall(2026, 3, 27, 9), id="spring-forward"),
    pytest.param(wall(2026, 10, 23, 9), id="fall-back"),
]


def daily_berlin_ical(first: datetime) -> list[Shift]:
    """Daily 09:00 Europe/Berlin hand-overs from ``first`` (alice, bob alternating days)."""
    stamp = first.strftime("%Y%m%dT%H%M%S")
    nxt = (first + timedelta(days=1)).strftime("%Y%m%dT%H%M%S")
    data = calendar(
        VTIMEZONE_BERLIN,
        vevent(
            "daily",
            f"DTSTART;TZID=Europe/Berlin:{stamp}",
            f"DTEND;TZID=Europe/Berlin:{nxt}",
            "RRULE:FREQ=DAILY;INTERVAL=2",
            "ATTENDEE:mailto:alice@example.com",
        ),
        vevent(
            "daily-bob",
            f"DTSTART;TZID=Europe/Berlin:{nxt}",
            f"DTEND;TZID=Europe/Berlin:{(first + timedelta(days=2)).strftime('%Y%m%dT%H%M%S')}",
            "RRULE:FREQ=DAILY;INTERVAL=2",
            "ATTENDEE:mailto:bob@example.com",
        ),
    )
    start = first.replace(tzinfo=BERLIN).astimezone(UTC)
    return ical_shifts(data, start=start, end=start + timedelta(days=5))


def daily_berlin_rotation(first: datetime) -> list[Shift]:
    """The same rota as a YAML rotation."""
    rotation = RotationConfig(
        start=first,
        timezone="Europe/Berlin",
        shift=timedelta(days=1),
        people=("alice@example.com", "bob@example.com"),
    )
    start = first.replace(tzinfo=BERLIN).astimezone(UTC)
    return rotation_shifts(rotation, start=start, end=start + timedelta(days=5))


@pytest.mark.parametrize("expand", [daily_berlin_ical, daily_berlin_rotation])
@pytest.mark.parametrize("first", DST_DAYS)
def test_daily_nine_oclock_hand_over_stays_at_nine_local_across_dst(
    expand: Callable[[datetime], list[Shift]], first: datetime
) -> None:
    """Across the last Sunday of March/October every hand-over is at 09:00 Berlin time, so the
    shift spanning the change lasts 23 or 25 hours and the UTC hour moves."""
    shifts = expand(first)
    assert len(shifts) >= 5
    local = [s.start.astimezone(BERLIN) for s in shifts]
    assert {(t.hour, t.minute) for t in local} == {(9, 0)}
    assert [t.date() for t in local] == [
        (first + timedelta(days=i)).date() for i in range(len(shifts))
    ]
    assert all(a.end == b.start for a, b in itertools.pairwise(shifts))
    lengths = {s.end - s.start for s in shifts}
    assert lengths == {timedelta(hours=24), timedelta(hours=23 if first.month == 3 else 25)}
    assert [s.people[0] for s in shifts[:3]] == [
        "alice@example.com",
        "bob@example.com",
        "alice@example.com",
    ]


def test_rotation_hand_over_in_the_dst_gap_uses_the_offset_before_it() -> None:
    """02:30 does not exist on 2026-03-29 in Berlin: as RFC 5545 §3.3.5, it is 03:30 CEST."""
    rotation = RotationConfig(
        start=wall(2026, 3, 27, 2, 30),
        timezone="Europe/Berlin",
        shift=timedelta(days=1),
        people=("alice", "bob"),
    )
    shifts = rotation_shifts(rotation, start=utc(2026, 3, 28), end=utc(2026, 3, 31))
    starts = [s.start.astimezone(BERLIN).strftime("%d %H:%M") for s in shifts]
    assert starts == ["27 02:30", "28 02:30", "29 03:30", "30 02:30"]


def test_rotation_hand_overs_never_go_backwards_in_a_sub_hour_rota_over_the_gap() -> None:
    """30-minute shifts across the spring-forward gap: no overlaps, no negative shifts."""
    rotation = RotationConfig(
        start=wall(2026, 3, 28, 23, 0),
        timezone="Europe/Berlin",
        shift=timedelta(minutes=30),
        people=("alice", "bob", "carol"),
    )
    shifts = rotation_shifts(rotation, start=utc(2026, 3, 28, 23), end=utc(2026, 3, 29, 3))
    assert all(s.end > s.start for s in shifts)
    assert all(a.end == b.start for a, b in itertools.pairwise(shifts))
    assert shifts[0].start <= utc(2026, 3, 28, 23)
    assert shifts[-1].end >= utc(2026, 3, 29, 3)


def test_rotation_takes_turns_and_nobody_is_on_call_before_it_starts() -> None:
    """Person i covers shifts k with k mod len(people) == i."""
    rotation = RotationConfig(
        start=wall(2026, 3, 2, 9),
        timezone="UTC",
        shift=timedelta(days=7),
        people=("alice", "bob", "carol"),
    )
    shifts = rotation_shifts(rotation, start=utc(2026, 2, 1), end=utc(2026, 4, 10))
    assert shifts[0].start == utc(2026, 3, 2, 9)
    assert [s.people for s in shifts[:5]] == [
        ("alice",),
        ("bob",),
        ("carol",),
        ("alice",),
        ("bob",),
    ]
    late = rotation_shifts(rotation, start=utc(2026, 3, 24), end=utc(2026, 3, 25))
    assert [(s.start, s.people) for s in late] == [(utc(2026, 3, 23, 9), ("alice",))]


# --- hostile sources ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"this is not a calendar", "malformed iCalendar"),
        (b"\xff\xfe\x00\x01binary", "malformed iCalendar"),
        (b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\n", "malformed iCalendar"),
        (vevent("e", "DTSTART:20260301T000000Z").encode(), "no VCALENDAR"),
        (calendar(vevent("e", "DTSTART:2026XX", "SUMMARY:alice")), "DTSTART"),
        (calendar(vevent("e", "DTEND:20260302T000000Z", "SUMMARY:alice")), "no DTSTART"),
        (calendar(vevent("e", "DTSTART:20260301T000000Z", "RRULE:FREQ=SOMETIMES")), "malformed"),
        (
            calendar(
                vevent(
                    "e", "DTSTART:20260301T000000Z", 'ATTENDEE;CN="x:mailto:a@b', "SUMMARY:alice"
                )
            ),
            "malformed iCalendar",
        ),
    ],
)
def test_malformed_icalendar_is_refused(data: bytes, message: str) -> None:
    """Garbage, truncation, broken values and broken lines are errors, never dropped lines."""
    with pytest.raises(OnCallSourceError, match=message):
        ical_shifts(data, start=utc(2026, 3, 1), end=utc(2026, 3, 3))


@pytest.mark.parametrize(
    "data",
    [
        calendar(vevent("e", "DTSTART;TZID=Mars/Olympus:20260301T090000", "SUMMARY:alice")),
        calendar(
            vevent(
                "e",
                "DTSTART:20260301T000000Z",
                "DTEND:20260302T000000Z",
                "RRULE:FREQ=DAILY",
                "EXDATE;TZID=Mars/Olympus:20260302T000000",
                "SUMMARY:alice",
            )
        ),
        calendar(
            vevent("e", "DTSTART;VALUE=DATE:20260301", "SUMMARY:alice"),
            header="X-WR-TIMEZONE:Mars/Olympus\n",
        ),
    ],
    ids=["dtstart", "exdate", "x-wr-timezone"],
)
def test_unknown_time_zone_is_refused(data: bytes) -> None:
    """icalendar would read an unknown TZID as floating time (and skip such an EXDATE)."""
    with pytest.raises(OnCallSourceError, match="unknown time zone 'Mars/Olympus'"):
        ical_shifts(data, start=utc(2026, 3, 1), end=utc(2026, 3, 4))


def test_a_windows_time_zone_name_is_understood() -> None:
    """Outlook exports name zones the Windows way; icalendar maps them to IANA zones."""
    data = calendar(
        vevent(
            "e",
            "DTSTART;TZID=W. Europe Standard Time:20260301T090000",
            "DURATION:PT8H",
            "SUMMARY:bob",
        )
    )
    [shift] = ical_shifts(data, start=utc(2026, 3, 1), end=utc(2026, 3, 2))
    assert shift.start == berlin(2026, 3, 1, 9)


def test_a_flood_of_occurrences_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sub-hourly RRULEs are refused before any expansion (from an old DTSTART they cost
    minutes of CPU); other floods are cut off at MAX_SHIFTS rather than expanded for minutes."""
    monkeypatch.setattr(oncall_sources, "MAX_SHIFTS", 50)
    for freq in ("SECONDLY", "MINUTELY"):
        data = calendar(
            vevent(
                "e", "DTSTART:20200301T000000Z", "DURATION:PT1S", f"RRULE:FREQ={freq}", "SUMMARY:a"
            )
        )
        with pytest.raises(OnCallSourceError, match=f"FREQ={freq} is refused"):
            ical_shifts(data, start=utc(2026, 3, 1), end=utc(2026, 3, 2))
    hourly = calendar(
        vevent("e", "DTSTART:20260301T000000Z", "DURATION:PT1H", "RRULE:FREQ=HOURLY", "SUMMARY:a")
    )
    with pytest.raises(OnCallSourceError, match="more than 50 shifts"):
        ical_shifts(hourly, start=utc(2026, 3, 1), end=utc(2026, 3, 5))
    rotation = RotationConfig(start=wall(2026, 3, 1), shift=timedelta(seconds=1), people=("alice",))
    with pytest.raises(OnCallSourceError, match="more than 50 shifts"):
        rotation_shifts(rotation, start=utc(2026, 3, 1), end=utc(2026, 3, 2))


def test_read_source_refuses_a_file_over_max_bytes(tmp_path: Path) -> None:
    """The file is read up to max_bytes + 1 bytes and refused."""
    (tmp_path / "big.ics").write_bytes(DAILY_ALICE + b" " * 2048)
    with pytest.raises(OnCallSourceError, match=r"over max_bytes \(1024 bytes\)"):
        read_source(
            "big.ics", resolve=lambda p: tmp_path / p, timeout=timedelta(seconds=1), max_bytes=1024
        )


def test_read_source_reads_relative_paths_through_resolve_and_names_missing_files(
    tmp_path: Path,
) -> None:
    """Relative paths go through resolve; a missing file is a one-line error naming it."""
    (tmp_path / "ok.ics").write_bytes(DAILY_ALICE)
    assert (
        read_source(
            "ok.ics", resolve=lambda p: tmp_path / p, timeout=timedelta(seconds=1), max_bytes=4096
        )
        == DAILY_ALICE
    )
    with pytest.raises(OnCallSourceError, match=r"cannot read .*gone\.ics: No such file"):
        read_source(
            "gone.ics", resolve=lambda p: tmp_path / p, timeout=timedelta(seconds=1), max_bytes=4096
        )


@pytest.mark.parametrize(
    "bad",
    [
        b"not a calendar",
        calendar(vevent("e", "DTSTART;TZID=Mars/Olympus:20260301T090000", "SUMMARY:alice")),
        OnCallSourceError("database.ics is over max_bytes (1024 bytes)"),
    ],
    ids=["malformed", "unknown-tzid", "huge"],
)
def test_a_bad_source_is_marked_failed_and_puts_nobody_on_call(bad: bytes | Exception) -> None:
    """Never loaded successfully: state failed with the reason, not ready, nobody on call."""
    config = make_config([ical_schedule()])
    schedules = schedules_for(config, Sources(database=bad), FakeClock(utc(2026, 3, 5)))
    assert schedules.on_call("alice", target(config, "db-1")) == ()
    status = schedules.status()["database"]
    assert status["state"] == "failed"
    assert status["last_success"] is None
    assert isinstance(status["error"], str)
    assert status["error"]
    assert schedules.ready() is False


def test_a_huge_file_through_read_source_fails_the_schedule(tmp_path: Path) -> None:
    """The bootstrap's read closure over read_source: an oversized file fails closed."""
    (tmp_path / "database.ics").write_bytes(DAILY_ALICE * 20)
    config = make_config([ical_schedule()])

    def read(schedule: ScheduleConfig) -> bytes:
        assert schedule.ical is not None
        return read_source(
            schedule.ical,
            resolve=lambda p: tmp_path / p,
            timeout=config.oncall.timeout,
            max_bytes=1024,
        )

    schedules = schedules_for(config, read, FakeClock(utc(2026, 3, 5)))
    assert (
        schedules.status()["database"]["error"]
        == f"{tmp_path / 'database.ics'} is over max_bytes (1024 bytes)"
    )
    assert schedules.on_call("alice", target(config, "db-1")) == ()


# --- names to users -----------------------------------------------------------------------------
def test_pagerduty_attendee_in_mixed_case_matches_the_user_by_email() -> None:
    """ATTENDEE:MAILTO:Alice@Example.COM is alice (e-mail compared ignoring case)."""
    data = DAILY_ALICE.replace(b"mailto:alice@example.com", b"MAILTO:Alice@Example.COM")
    config = make_config([ical_schedule()])
    schedules = schedules_for(config, Sources(database=data), FakeClock(utc(2026, 3, 5, 12)))
    assert schedules.on_call("alice", target(config, "db-1")) == ("database",)
    assert schedules.on_call("bob", target(config, "db-1")) == ()
    assert schedules.status()["database"] == {
        "state": "ok",
        "last_success": "2026-03-05T12:00:00Z",
        "error": None,
        "warnings": [],
    }


def test_an_attendee_matching_two_users_puts_neither_on_call() -> None:
    """Two users share an e-mail (different case): ambiguous, counts for nobody, warned."""
    twin = {"id": "alice2", "name": "Alice Two", "email": "ALICE@example.com"}
    config = make_config([ical_schedule()], extra_users=(twin,))
    schedules = schedules_for(config, Sources(database=DAILY_ALICE), FakeClock(utc(2026, 3, 5)))
    db1 = target(config, "db-1")
    assert schedules.on_call("alice", db1) == ()
    assert schedules.on_call("alice2", db1) == ()
    status = schedules.status()["database"]
    assert status["state"] == "ok"
    assert status["warnings"] == [
        "'alice@example.com' matches several users (alice, alice2); it counts for none"
    ]


def test_unknown_people_are_warned_about_and_the_rest_still_count() -> None:
    """An unknown name counts for nobody; a known id in the same shift still counts."""
    data = calendar(
        vevent(
            "e",
            "DTSTART:20260301T000000Z",
            "DTEND:20260310T000000Z",
            "ATTENDEE:mailto:stranger@example.net",
            "ATTENDEE:bob",
        )
    )
    config = make_config([ical_schedule()])
    schedules = schedules_for(config, Sources(database=data), FakeClock(utc(2026, 3, 5)))
    assert schedules.on_call("bob", target(config, "db-1")) == ("database",)
    assert schedules.status()["database"]["warnings"] == [
        "'stranger@example.net' is no user's id or e-mail; it counts for nobody"
    ]


# --- coverage and time --------------------------------------------------------------------------
def test_on_call_only_for_targets_the_schedule_covers_by_name_or_label() -> None:
    """A schedule covering db-1 by name says nothing about db-2; one covering service=postgres
    by label covers db-1 and db-2 but not corp-directory."""
    config = make_config(
        [
            ical_schedule("database", names=["db-1"]),
            ical_schedule("postgres", labels={"service": "postgres"}),
        ],
    )
    schedules = schedules_for(
        config, Sources(database=DAILY_ALICE, postgres=DAILY_ALICE), FakeClock(utc(2026, 3, 5))
    )
    assert schedules.on_call("alice", target(config, "db-1")) == ("database", "postgres")
    assert schedules.on_call("alice", target(config, "db-2")) == ("postgres",)
    assert schedules.on_call("alice", target(config, "corp-directory")) == ()


def test_on_call_follows_the_clock_through_shift_boundaries() -> None:
    """Shifts are half-open [start, end): at the hand-over instant the next person is on."""
    config = make_config(
        [
            {
                "name": "rota",
                "rotation": {
                    "start": "2026-03-02T09:00:00",
                    "timezone": "Europe/Berlin",
                    "shift": "P1D",
                    "people": ["alice", "bob@example.com"],
                },
                "targets": {"names": ["db-1"]},
            }
        ],
    )
    clock = FakeClock(berlin(2026, 3, 2, 8, 59).astimezone(UTC))
    schedules = schedules_for(config, Sources(), clock)
    db1 = target(config, "db-1")
    assert (schedules.on_call("alice", db1), schedules.on_call("bob", db1)) == ((), ())
    clock.set(berlin(2026, 3, 2, 9).astimezone(UTC))
    schedules.refresh()  # as the background thread does every oncall.refresh
    assert (schedules.on_call("alice", db1), schedules.on_call("bob", db1)) == (("rota",), ())
    clock.set(berlin(2026, 3, 3, 9).astimezone(UTC))
    schedules.refresh()
    assert (schedules.on_call("alice", db1), schedules.on_call("bob", db1)) == ((), ("rota",))


def test_a_failing_source_keeps_its_last_good_state_then_fails_closed() -> None:
    """ok → stale (last good still used, error shown) → failed after keep_last_good (nobody
    on call, not ready) → ok again once the source reads."""
    config = make_config([ical_schedule()])
    sources = Sources(database=DAILY_ALICE)
    clock = FakeClock(utc(2026, 3, 5, 10))
    schedules = schedules_for(config, sources, clock)
    db1 = target(config, "db-1")

    sources.data["database"] = OnCallSourceError("https://pd.example/private/feed.ics: HTTP 503")
    clock.advance(timedelta(minutes=5))
    schedules.refresh()
    status = schedules.status()["database"]
    assert (status["state"], status["error"]) == (
        "stale",
        "https://pd.example/private/feed.ics: HTTP 503",
    )
    assert status["last_success"] == "2026-03-05T10:00:00Z"
    assert schedules.on_call("alice", db1) == ("database",)
    assert schedules.ready() is True

    clock.set(utc(2026, 3, 5, 11))  # exactly keep_last_good after the last success: still used
    assert schedules.on_call("alice", db1) == ("database",)
    clock.advance(timedelta(seconds=1))
    assert schedules.on_call("alice", db1) == ()
    assert schedules.status()["database"]["state"] == "failed"
    assert schedules.ready() is False

    sources.data["database"] = DAILY_ALICE
    schedules.refresh()
    assert schedules.status()["database"]["state"] == "ok"
    assert schedules.on_call("alice", db1) == ("database",)


def test_rotation_schedules_never_call_read_and_refresh_only_calls_it_per_ical_source() -> None:
    """``read`` is for iCalendar sources; a rotation comes from the configuration."""
    config = make_config(
        [
            ical_schedule(),
            {
                "name": "rota",
                "rotation": {"start": "2026-03-01T00:00:00", "people": ["carol"]},
                "targets": {"names": ["db-2"]},
            },
        ],
    )
    sources = Sources(database=DAILY_ALICE)
    schedules = schedules_for(config, sources, FakeClock(utc(2026, 3, 5)))
    assert sources.calls == 1
    assert schedules.on_call("carol", target(config, "db-2")) == ("rota",)


def test_the_example_database_calendar_has_alice_on_call_all_day_every_day() -> None:
    """examples/oncall/database.ics (used by the demo): alice always, bob never."""
    config = make_config(
        [{"name": "database", "ical": str(EXAMPLE_ICS), "targets": {"names": ["db-1"]}}]
    )

    def read(schedule: ScheduleConfig) -> bytes:
        assert schedule.ical is not None
        return read_source(
            schedule.ical,
            resolve=Path,
            timeout=config.oncall.timeout,
            max_bytes=config.oncall.max_bytes,
        )

    db1 = target(config, "db-1")
    for instant in (
        utc(2026, 1, 1),
        utc(2026, 3, 29, 1, 30),
        utc(2026, 11, 21, 23, 59) + timedelta(seconds=59),
        utc(2027, 6, 15, 12),
    ):
        schedules = schedules_for(config, read, FakeClock(instant))
        assert schedules.on_call("alice", db1) == ("database",), instant
        assert schedules.on_call("bob", db1) == (), instant
        assert schedules.status()["database"]["warnings"] == []


# --- health: metrics and the background thread --------------------------------------------------
def test_collector_exports_up_usable_and_last_success() -> None:
    """keyturn_oncall_source_{up,usable,last_success_timestamp_seconds}{schedule}."""
    config = make_config([ical_schedule("database"), ical_schedule("broken")])
    clock = FakeClock(utc(2026, 3, 5, 10))
    schedules = schedules_for(config, Sources(database=DAILY_ALICE, broken=b"junk"), clock)
    registry = CollectorRegistry()
    registry.register(OnCallCollector(schedules))

    def sample(name: str, schedule: str) -> float | None:
        return registry.get_sample_value(f"keyturn_oncall_source_{name}", {"schedule": schedule})

    assert sample("up", "database") == 1.0
    assert sample("usable", "database") == 1.0
    assert sample("last_success_timestamp_seconds", "database") == utc(2026, 3, 5, 10).timestamp()
    assert sample("up", "broken") == 0.0
    assert sample("usable", "broken") == 0.0
    assert sample("last_success_timestamp_seconds", "broken") is None
    clock.advance(timedelta(hours=2))  # database never refreshed again: too old to use
    assert sample("up", "database") == 1.0
    assert sample("usable", "database") == 0.0


def test_start_refreshes_at_once_then_in_the_background_until_closed() -> None:
    """The first refresh is synchronous; the thread re-reads every oncall.refresh."""
    config = make_config([ical_schedule()])
    config = config.model_copy(
        update={"oncall": config.oncall.model_copy(update={"refresh": timedelta(milliseconds=20)})}
    )
    sources = Sources(database=DAILY_ALICE)
    schedules = OnCallSchedules(config, sources, FakeClock(utc(2026, 3, 5)))
    schedules.start()
    try:
        assert sources.calls >= 1
        assert schedules.status()["database"]["state"] == "ok"
        sources.data["database"] = OnCallSourceError("gone")
        for _ in range(200):
            if schedules.status()["database"]["state"] == "stale":
                break
            time.sleep(0.02)
        assert schedules.status()["database"]["error"] == "gone"
        with pytest.raises(RuntimeError, match="already started"):
            schedules.start()
    finally:
        schedules.close()
    calls = sources.calls
    time.sleep(0.1)
    assert sources.calls == calls


def test_no_schedules_is_ready_and_nobody_is_on_call() -> None:
    """Without schedules there is nothing to fail and nothing to be on call for."""
    config = make_config([])
    schedules = OnCallSchedules(config, Sources(), FakeClock())
    schedules.start()
    schedules.close()
    assert schedules.ready() is True
    assert schedules.status() == {}
    assert schedules.on_call("alice", target(config, "db-1")) == ()


def test_a_defect_in_one_source_is_recorded_and_the_others_still_refresh() -> None:
    """An unexpected exception fails that schedule closed, visibly; refresh does not raise."""
    config = make_config([ical_schedule("broken"), ical_schedule("database")])
    sources = Sources(broken=RuntimeError("bug"), database=DAILY_ALICE)
    schedules = schedules_for(config, sources, FakeClock(utc(2026, 3, 5)))
    status = schedules.status()
    assert (status["broken"]["state"], status["broken"]["error"]) == (
        "failed",
        "internal error (RuntimeError)",
    )
    assert status["database"]["state"] == "ok"
    assert schedules.on_call("alice", target(config, "db-1")) == ("database",)
