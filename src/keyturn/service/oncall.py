"""On-call schedules: who is on call, for which targets, right now.

:class:`OnCallSchedules` holds, per configured schedule (``oncall.schedules``), the shifts of a
window around now, with each shift's people resolved to user ids. A background thread re-reads
the sources every ``oncall.refresh``; request threads ask :meth:`OnCallSchedules.on_call`, which
reads the injected clock, never the sources.

Failure is fail-closed and visible:

* a source that cannot be read or parsed keeps its last good shifts (state ``stale``) until its
  last success is older than ``oncall.keep_last_good``; then, or if it never loaded, it puts
  nobody on call (state ``failed``) and :meth:`OnCallSchedules.ready` is false;
* a name that matches several users counts for none of them, and a name that matches no user
  counts for nobody; both are warnings in :meth:`OnCallSchedules.status`.

The facts policy rules see (``requester.on_call``, ``requester.on_call_schedules``) come from
:meth:`OnCallSchedules.on_call`; :class:`OnCallCollector` exports the sources' health to
Prometheus.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from keyturn.adapters.oncall_sources import (
    OnCallSourceError,
    Shift,
    ical_shifts,
    rotation_shifts,
)
from keyturn.config import KeyturnConfig, ScheduleConfig, TargetConfig
from keyturn.ports import Clock

log = structlog.get_logger("keyturn.oncall")

MAX_WARNINGS = 20
"""Most warnings kept per schedule; the rest are counted in one last warning."""

LOOKBACK = timedelta(days=1)
"""How far before now each refresh computes shifts (a shift that began yesterday still counts)."""

State = Literal["ok", "stale", "failed"]


@dataclass(frozen=True)
class _Cover:
    """A shift with its people resolved: user ids on call in ``[start, end)`` (UTC)."""

    start: datetime
    end: datetime
    user_ids: frozenset[str]


@dataclass(frozen=True)
class _Loaded:
    """The result of a schedule's last successful refresh, at ``at`` (clock time)."""

    covers: tuple[_Cover, ...]
    at: datetime
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class _Source:
    """A schedule's last good load, and the error of its last refresh (None if it succeeded)."""

    loaded: _Loaded | None = None
    error: str | None = "not loaded yet"


@dataclass(frozen=True)
class SourceHealth:
    """One schedule's health at a moment.

    Attributes:
        schedule: the schedule's name.
        state: ``ok`` (last refresh succeeded), ``stale`` (last refresh failed, the last good
            shifts are still used) or ``failed`` (never loaded, or the last success is older
            than ``keep_last_good``: nobody is on call for it).
        up: the last refresh succeeded.
        last_success: clock time of the last successful refresh (aware UTC), or None.
        error: why the last refresh failed (one line, no secrets), or None.
        warnings: names the last good load could not match to exactly one user.
    """

    schedule: str
    state: State
    up: bool
    last_success: datetime | None
    error: str | None
    warnings: tuple[str, ...]


class OnCallSchedules:
    """The configured on-call schedules, refreshed in the background; thread-safe.

    Args:
        config: ``oncall`` gives the schedules and timings; ``users`` the people.
        read: returns the raw iCalendar bytes of an ``ical`` schedule (the composition root
            passes a closure over :func:`keyturn.adapters.oncall_sources.read_source`); raises
            :class:`OnCallSourceError`. Never called for rotation schedules.
        clock: the time on-call facts are computed for.
        lookahead: how far ahead of now each refresh computes shifts (at least twice
            ``oncall.refresh`` and ``keep_last_good`` are always covered).
    """

    def __init__(
        self,
        config: KeyturnConfig,
        read: Callable[[ScheduleConfig], bytes | None],
        clock: Clock,
        *,
        lookahead: timedelta = timedelta(days=2),
    ) -> None:
        self._config = config
        self._read = read
        self._clock = clock
        oncall = config.oncall
        self._horizon = max(lookahead, 2 * oncall.refresh, oncall.keep_last_good + oncall.refresh)
        self._sources = {s.name: _Source() for s in oncall.schedules}
        self._lock = threading.Lock()  # guards self._sources (its values are immutable)
        self._refreshing = threading.Lock()  # one refresh at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- refreshing -----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read every schedule once; never raises.

        Each schedule's shifts over ``[now - 1 day, now + horizon]`` replace the previous ones on
        success; on failure the previous good shifts are kept and the error is recorded.
        """
        with self._refreshing:
            for schedule in self._config.oncall.schedules:
                self._refresh_one(schedule)

    def _refresh_one(self, schedule: ScheduleConfig) -> None:
        now = self._clock.now()
        try:
            shifts = self._shifts(schedule, now - LOOKBACK, now + self._horizon)
        except OnCallSourceError as exc:
            self._record_failure(schedule.name, exc.message)
            return
        except Exception as exc:
            # A defect must not stop the other schedules from refreshing. It is not swallowed:
            # it is logged with its traceback, shown in status()/metrics, and fails closed.
            log.exception("on-call refresh crashed", schedule=schedule.name)
            self._record_failure(schedule.name, f"internal error ({type(exc).__name__})")
            return
        covers, warnings = self._resolve(shifts)
        loaded = _Loaded(covers=covers, at=now, warnings=warnings)
        with self._lock:
            recovered = self._sources[schedule.name].error is not None
            self._sources[schedule.name] = _Source(loaded=loaded, error=None)
        if recovered:
            log.info("on-call schedule loaded", schedule=schedule.name, shifts=len(covers))

    def _shifts(self, schedule: ScheduleConfig, start: datetime, end: datetime) -> list[Shift]:
        if schedule.rotation is not None:
            return rotation_shifts(schedule.rotation, start=start, end=end)
        data = self._read(schedule)
        if data is None:
            raise OnCallSourceError("the source returned no data")
        return ical_shifts(data, start=start, end=end)

    def _record_failure(self, name: str, error: str) -> None:
        with self._lock:
            previous = self._sources[name]
            self._sources[name] = _Source(loaded=previous.loaded, error=error)
        log.warning("on-call schedule not refreshed", schedule=name, error=error)

    def _resolve(self, shifts: list[Shift]) -> tuple[tuple[_Cover, ...], tuple[str, ...]]:
        """Shifts with names matched to user ids (``KeyturnConfig.users_named``); warnings."""
        ids: dict[str, str | None] = {}
        warnings: list[str] = []
        for name in sorted({n for s in shifts for n in s.people}):
            users = self._config.users_named(name)
            ids[name] = users[0].id if len(users) == 1 else None
            if not users:
                warnings.append(f"{name!r} is no user's id or e-mail; it counts for nobody")
            elif len(users) > 1:
                names = ", ".join(sorted(u.id for u in users))
                warnings.append(f"{name!r} matches several users ({names}); it counts for none")
        covers = tuple(
            _Cover(s.start, s.end, frozenset(i for n in s.people if (i := ids[n]) is not None))
            for s in shifts
        )
        if len(warnings) > MAX_WARNINGS:
            extra = len(warnings) - MAX_WARNINGS + 1
            warnings = [*warnings[: MAX_WARNINGS - 1], f"and {extra} more"]
        return covers, tuple(warnings)

    # --- reading --------------------------------------------------------------------------------

    def on_call(self, user_id: str, target: TargetConfig) -> tuple[str, ...]:
        """Names of the schedules covering ``target`` (``ScheduleConfig.targets``) for which
        ``user_id`` is on call at the clock's now, in configuration order.

        A schedule in state ``failed`` contributes nothing (fail closed).
        """
        now = self._clock.now()
        with self._lock:
            sources = dict(self._sources)
        found = []
        for schedule in self._config.oncall.schedules:
            loaded = self._current(sources[schedule.name].loaded, now)
            if loaded is None or not schedule.targets.matches(target):
                continue
            if any(c.start <= now < c.end and user_id in c.user_ids for c in loaded.covers):
                found.append(schedule.name)
        return tuple(found)

    def health(self) -> list[SourceHealth]:
        """Every schedule's health at the clock's now, in configuration order."""
        now = self._clock.now()
        with self._lock:
            sources = dict(self._sources)
        return [self._health(name, source, now) for name, source in sources.items()]

    def _health(self, name: str, source: _Source, now: datetime) -> SourceHealth:
        loaded = source.loaded
        state: State = "ok" if source.error is None else "stale"
        if self._current(loaded, now) is None:
            state = "failed"
        return SourceHealth(
            schedule=name,
            state=state,
            up=source.error is None,
            last_success=loaded.at if loaded else None,
            error=source.error,
            warnings=loaded.warnings if loaded else (),
        )

    def _current(self, loaded: _Loaded | None, now: datetime) -> _Loaded | None:
        """The load if it may still be used (its success is at most keep_last_good old)."""
        if loaded is None or now - loaded.at > self._config.oncall.keep_last_good:
            return None
        return loaded

    def status(self) -> dict[str, dict[str, object]]:
        """Per schedule name: ``{"state": "ok"|"stale"|"failed", "last_success": RFC 3339 UTC
        string or None, "error": str or None, "warnings": [str, ...]}`` (for ``/readyz``)."""
        return {
            h.schedule: {
                "state": h.state,
                "last_success": _rfc3339(h.last_success),
                "error": h.error,
                "warnings": list(h.warnings),
            }
            for h in self.health()
        }

    def ready(self) -> bool:
        """True unless some schedule is ``failed`` (true when no schedules are configured)."""
        return all(h.state != "failed" for h in self.health())

    # --- background thread ----------------------------------------------------------------------

    def start(self) -> None:
        """Refresh once now (synchronously), then every ``oncall.refresh`` in a daemon thread.

        Raises:
            RuntimeError: already started.
        """
        if self._thread is not None:
            raise RuntimeError("on-call refresh already started")
        self.refresh()
        if not self._config.oncall.schedules:
            return
        self._thread = threading.Thread(target=self._run, name="keyturn-oncall", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = self._config.oncall.refresh.total_seconds()
        while not self._stop.wait(interval):
            self.refresh()

    def close(self) -> None:
        """Stop the refresh thread; waits for a refresh in progress (bounded by the source
        timeout per schedule, then gives up on the daemon thread)."""
        self._stop.set()
        if self._thread is not None:
            per_source = self._config.oncall.timeout.total_seconds() + 1
            self._thread.join(timeout=per_source * max(1, len(self._config.oncall.schedules)))


def _rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class OnCallCollector(Collector):
    """Prometheus gauges of the on-call sources, computed at scrape time (label ``schedule``):

    * ``keyturn_oncall_source_up``: 1 if the last refresh succeeded, else 0;
    * ``keyturn_oncall_source_usable``: 1 if its shifts count for on-call facts now (``ok`` or
      ``stale``), 0 if it fails closed (``failed``);
    * ``keyturn_oncall_source_last_success_timestamp_seconds``: Unix time of the last
      successful refresh (no sample before the first).
    """

    def __init__(self, schedules: OnCallSchedules) -> None:
        self._schedules = schedules

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The three gauge families, one sample per schedule."""
        return iter(_families(self._schedules.health()))


def _families(healths: Iterable[SourceHealth]) -> list[GaugeMetricFamily]:
    labels = ["schedule"]
    up = GaugeMetricFamily(
        "keyturn_oncall_source_up", "1 if the last refresh succeeded, else 0.", labels=labels
    )
    usable = GaugeMetricFamily(
        "keyturn_oncall_source_usable",
        "1 if the schedule's shifts count for on-call facts (fresh or last good), 0 if it "
        "fails closed.",
        labels=labels,
    )
    last = GaugeMetricFamily(
        "keyturn_oncall_source_last_success_timestamp_seconds",
        "Unix time of the schedule's last successful refresh, in seconds.",
        labels=labels,
    )
    for h in healths:
        up.add_metric([h.schedule], 1.0 if h.up else 0.0)
        usable.add_metric([h.schedule], 0.0 if h.state == "failed" else 1.0)
        if h.last_success is not None:
            last.add_metric([h.schedule], h.last_success.timestamp())
    return [up, usable, last]
