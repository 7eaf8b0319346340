"""The system clock: the one place Keyturn reads the current time."""

from __future__ import annotations

from datetime import UTC, datetime


class SystemClock:
    """:class:`keyturn.ports.Clock` backed by the operating system's clock (UTC)."""

    def now(self) -> datetime:
        """The current time, aware, UTC."""
        return datetime.now(UTC)
