"""Helpers for the incident-aware policy tests: a fake on-call source, wiring, asking, alerting."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from keyturn.config import TargetConfig
from keyturn.domain.policy import PolicyEngine
from keyturn.service import access, alerts
from keyturn.service.access import RequestInput
from keyturn.service.deps import Deps
from keyturn.testing import FakeClock, FakeProvider, RecordingNotifier
from tests.conftest import example_data, fake_deps, load, user

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x@y"
HOOK_TOKEN = "test-alert-hook-token"
HOOK = f"Bearer {HOOK_TOKEN}"


class FakeOnCall:
    """:class:`keyturn.ports.OnCall` set by the test: ``people`` maps a user id to the schedules
    they are on call for; like the example's ``database`` schedule, a schedule covers only the
    targets labelled ``service: postgres``."""

    def __init__(self) -> None:
        self.people: dict[str, tuple[str, ...]] = {}

    def on_call(self, user_id: str, target: TargetConfig) -> tuple[str, ...]:
        """The schedules ``user_id`` is on call for, if they cover ``target``."""
        if target.labels.get("service") != "postgres":
            return ()
        return self.people.get(user_id, ())

    def status(self) -> dict[str, dict[str, object]]:
        """Every schedule is fresh."""
        return {"database": {"state": "ok"}}


def incident_data(tmp_path: Path) -> dict[str, Any]:
    """The example configuration with the alert webhooks on (bearer :data:`HOOK_TOKEN`)."""
    data = example_data(tmp_path)
    data["alerts"]["bearer_token_sha256"] = hashlib.sha256(HOOK_TOKEN.encode()).hexdigest()
    return data


def wire(
    data: dict[str, Any],
    clock: FakeClock,
    provider: FakeProvider,
    notifier: RecordingNotifier,
    oncall: FakeOnCall,
) -> Deps:
    """Services over fakes, with the recording notifier and the fake on-call source."""
    return fake_deps(data, clock, {"ssh": provider}, notifier=notifier, oncall=oncall)


def reconfigure(deps: Deps, data: dict[str, Any]) -> None:
    """Put a changed configuration in force, as a reload does (validated, policy recompiled)."""
    config = load(data).config
    deps.config = config
    deps.policy = PolicyEngine(config)


def ask(
    deps: Deps,
    who: str,
    role: str = "server-admin",
    *,
    target: str = "db-1",
    duration: timedelta = timedelta(minutes=30),
    start: datetime | None = None,
) -> access.RequestView:
    """``who`` asks for ``role`` on ``target`` (with an SSH key, as every example role needs)."""
    data = RequestInput(
        role=role,
        target=target,
        duration=duration,
        justification="PostgresPrimaryDown on db-1",
        ssh_public_key=KEY,
        start=start,
    )
    return access.request_access(deps, user(deps, who), data)


def fire(
    deps: Deps,
    name: str = "PostgresPrimaryDown",
    *,
    instance: str = "db-1:9187",
    status: str = "firing",
    ends_at: datetime | None = None,
    alert_id: str | None = None,
) -> alerts.Received:
    """Send one alert through the generic webhook, as monitoring would."""
    alert: dict[str, Any] = {
        "id": alert_id or f"{name}-{instance}",
        "name": name,
        "status": status,
        "severity": "critical",
        "labels": {"instance": instance},
        "starts_at": _rfc3339(deps.clock.now() - timedelta(minutes=3)),
    }
    if ends_at is not None:
        alert["ends_at"] = _rfc3339(ends_at)
    body = json.dumps({"alerts": [alert]}).encode()
    return alerts.receive(deps, "generic", body, HOOK)


def _rfc3339(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def metric(deps: Deps, name: str, **labels: str) -> float:
    """A sample of the instance's metrics (0 when it was never counted)."""
    return deps.metrics.registry.get_sample_value(name, labels) or 0.0


def stored(deps: Deps) -> tuple[int, int, int]:
    """(requests, grants, audit events) in the store: compared before and after a refusal."""
    with deps.store.transaction() as tx:
        return (
            len(tx.list_requests(limit=10_000)),
            len(tx.list_grants(limit=10_000)),
            len(tx.audit_events()),
        )
