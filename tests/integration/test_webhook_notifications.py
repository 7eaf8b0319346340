"""WebhookNotifier.notify against a real HTTP receiver on loopback: payload shape and token."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from structlog.testing import capture_logs

from keyturn.adapters.notifiers.webhook import WebhookNotifier
from keyturn.ports import Notification, Recipient
from tests.webhook_receiver import Receiver, serving

pytestmark = pytest.mark.integration

TOKEN = "webhook-secret-123"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving(Receiver()) as server:
        yield server


def test_notification_is_posted_as_json_with_the_bearer_token(receiver: Receiver) -> None:
    """The receiver gets one POST: the token as ``Authorization: Bearer`` and the documented
    payload (event, summary, text, recipients, details); the token never reaches the log."""
    notifier = WebhookNotifier(receiver.url, token=TOKEN, timeout=timedelta(seconds=5))
    notification = Notification(
        "grant.activated",
        (Recipient("alice", "Alice Martin", "alice@example.com"), Recipient("sam", "Sam", None)),
        "Active: server-admin on db-1 until 2026-11-17 03:15 UTC",
        "Your server-admin access on db-1 is active.",
        {"request_id": "req_1", "grant_id": "grt_2", "not_after": "2026-11-17T03:15:00.000000Z"},
    )
    with capture_logs() as logs:
        notifier.notify(notification)
        notifier.close()

    [(path, headers, payload)] = receiver.received
    assert path == "/hooks/keyturn"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Content-Type"] == "application/json"
    assert payload == {
        "source": "keyturn",
        "kind": "notification",
        "event": "grant.activated",
        "summary": "Active: server-admin on db-1 until 2026-11-17 03:15 UTC",
        "text": "Your server-admin access on db-1 is active.",
        "recipients": [
            {"user_id": "alice", "name": "Alice Martin", "email": "alice@example.com"},
            {"user_id": "sam", "name": "Sam", "email": None},
        ],
        "details": {
            "request_id": "req_1",
            "grant_id": "grt_2",
            "not_after": "2026-11-17T03:15:00.000000Z",
        },
    }
    assert TOKEN not in repr(logs)
