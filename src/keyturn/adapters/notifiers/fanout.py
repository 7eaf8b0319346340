"""One notifier that hands every alert and notification to several (log, webhook, e-mail, chat).

The :class:`~keyturn.ports.Notifier` contract says adapters never raise. The fan-out still stands
between them: if an adapter breaks that contract (a bug), the exception is logged with its
traceback, under the adapter's class name, and the remaining adapters are called anyway. It is
logged and not re-raised because a notification must never undo or block what it reports (a grant
that was revoked stays revoked whether or not anyone heard about it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import structlog

from keyturn.ports import Notification, Notifier

log = structlog.get_logger("keyturn.notifier")


@runtime_checkable
class Closeable(Protocol):
    """An adapter with background delivery to finish before shutdown."""

    def close(self) -> None:
        """Deliver what is queued, then stop."""


class FanoutNotifier:
    """:class:`keyturn.ports.Notifier` calling each of ``notifiers`` in turn, in order.

    Args:
        notifiers: the adapters; the same alert or notification goes to each.
    """

    def __init__(self, notifiers: Sequence[Notifier]) -> None:
        self._notifiers = tuple(notifiers)

    @property
    def notifiers(self) -> tuple[Notifier, ...]:
        """The adapters, in call order."""
        return self._notifiers

    def alert(self, event: str, summary: str, details: dict[str, str]) -> None:
        """Give the alert to every adapter; never raises."""
        for notifier in self._notifiers:
            _call(notifier, lambda n: n.alert(event, summary, details), alert=event)

    def notify(self, notification: Notification) -> None:
        """Give the notification to every adapter; never raises."""
        for notifier in self._notifiers:
            _call(notifier, lambda n: n.notify(notification), notification=notification.event)

    def close(self) -> None:
        """Close every adapter that has ``close`` (each finishes its queued deliveries)."""
        for notifier in self._notifiers:
            if isinstance(notifier, Closeable):
                notifier.close()


def _call(notifier: Notifier, send: Callable[[Notifier], None], **about: str) -> None:
    """Run ``send(notifier)``; an exception (a broken no-raise contract) is logged with its
    traceback so the bug is visible, and does not reach the caller or the other adapters."""
    try:
        send(notifier)
    except Exception:  # the port forbids raising; this is the guard against an adapter's bug
        log.exception("notifier adapter raised", adapter=type(notifier).__name__, **about)
