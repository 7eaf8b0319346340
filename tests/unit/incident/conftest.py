"""Fixtures of the incident-policy tests: the example configuration with alert webhooks on,
services over fakes with a fake on-call source and a recording notifier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from keyturn.service.deps import Deps
from keyturn.testing import FakeClock, FakeProvider, RecordingNotifier
from tests.unit.incident import FakeOnCall, incident_data, wire


@pytest.fixture
def oncall() -> FakeOnCall:
    """Nobody is on call until a test says so."""
    return FakeOnCall()


@pytest.fixture
def notifier() -> RecordingNotifier:
    """Records every notification."""
    return RecordingNotifier()


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Any]:
    """The example configuration, alert webhooks on."""
    return incident_data(tmp_path)


@pytest.fixture
def deps(
    data: dict[str, Any],
    clock: FakeClock,
    provider: FakeProvider,
    notifier: RecordingNotifier,
    oncall: FakeOnCall,
) -> Deps:
    """Services over fakes, with the fake on-call source and the recording notifier."""
    return wire(data, clock, provider, notifier, oncall)
