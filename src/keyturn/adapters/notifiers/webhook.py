"""Alerts to the log and, when configured, to a webhook (JSON ``POST``).

Delivery never blocks the caller: alerts go on a bounded queue that one daemon thread drains
with httpx. A webhook that is down or slow costs a log line per alert, never a revocation.
The payload is ``{"source": "keyturn", "kind": "alert", "event", "summary", "details"}`` for
operational alerts and ``{"source", "kind": "notification", "event", "summary", "text",
"recipients", "details"}`` for notifications; the token (if any) is
sent as ``Authorization: Bearer`` and never logged; the URL is logged by host only.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from keyturn.ports import Notification

log = structlog.get_logger("keyturn.notifier")

QUEUE_SIZE = 10_000


class LogNotifier:
    """Alerts as structured log lines (``alert=<event>``), at error level."""

    def alert(self, event: str, summary: str, details: dict[str, str]) -> None:
        """Log the alert."""
        log.error(summary, alert=event, details=details)

    def notify(self, notification: Notification) -> None:
        """Log that a notification was sent, to whom (user ids) and about what (ids only)."""
        log.info(
            notification.subject,
            notification=notification.event,
            recipients=[r.user_id for r in notification.recipients],
            request_id=notification.data.get("request_id"),
            grant_id=notification.data.get("grant_id"),
        )


class WebhookNotifier:
    """Log every alert, and ``POST`` it to ``url`` from a background thread."""

    def __init__(self, url: str, *, token: str | None = None, timeout: timedelta) -> None:
        self._url = url
        self._host = urlsplit(url).netloc.rsplit("@", 1)[-1]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(timeout=timeout.total_seconds(), headers=headers)
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._log = LogNotifier()
        self._thread = threading.Thread(target=self._drain, name="keyturn-notifier", daemon=True)
        self._thread.start()

    def alert(self, event: str, summary: str, details: dict[str, str]) -> None:
        """Log the alert and queue it for the webhook (dropped, with a log line, if full)."""
        self._log.alert(event, summary, details)
        payload = {
            "source": "keyturn",
            "kind": "alert",
            "event": event,
            "summary": summary,
            "details": details,
        }
        self._enqueue(payload)

    def notify(self, notification: Notification) -> None:
        """Log the notification and queue it for the webhook (``{"kind": "notification", …}``)."""
        self._log.notify(notification)
        payload = {
            "source": "keyturn",
            "kind": "notification",
            "event": notification.event,
            "summary": notification.subject,
            "text": notification.text,
            "recipients": [
                {"user_id": r.user_id, "name": r.name, "email": r.email}
                for r in notification.recipients
            ],
            "details": notification.data,
        }
        self._enqueue(payload)

    def _enqueue(self, payload: dict[str, Any]) -> None:
        """Queue a payload for the sender thread; if the queue is full, drop it with a log line."""
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            log.error(
                f"{payload['kind']} queue full; webhook delivery dropped",
                webhook=self._host,
                about=payload["event"],
            )

    def _drain(self) -> None:
        while (payload := self._queue.get()) is not None:
            try:
                response = self._client.post(self._url, json=payload)
                if response.status_code >= 300:
                    log.error(
                        "webhook refused alert",
                        webhook=self._host,
                        status=response.status_code,
                        alert=payload["event"],
                    )
            except httpx.HTTPError as exc:
                log.error(
                    "webhook unreachable",
                    webhook=self._host,
                    error=type(exc).__name__,
                    alert=payload["event"],
                )

    def close(self) -> None:
        """Deliver what is queued (the stop marker goes behind it; waits ~10 s at most), then
        stop the thread and close the client."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=5)
        self._thread.join(timeout=5)
        self._client.close()
