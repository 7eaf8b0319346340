"""Break-glass limits: a grant keeps its cap (no extension), and break-glass skips review but
never eligibility."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from keyturn.break_glass_offline import OfflineAsk, check_ask
from keyturn.domain.errors import Forbidden
from keyturn.domain.model import GrantStatus
from keyturn.service import grants
from keyturn.service.break_glass import BreakGlassInput, break_glass
from keyturn.service.deps import Deps
from keyturn.testing import FakeClock, FakeProvider
from tests.conftest import events, example_data, fake_deps, user

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOGmQYzvV0Hq0bqCkTnbXJ0u3xV0B7t5xkz5bQ9nq1Zs alice"


def test_a_break_glass_grant_cannot_be_extended(deps: Deps, clock: FakeClock) -> None:
    alice = user(deps, "alice")
    view = break_glass(
        deps,
        alice,
        BreakGlassInput(
            role="db-admin",
            target="db-1",
            justification="primary is down and failover is stuck, need a shell",
            duration=timedelta(minutes=30),
            ssh_public_key=KEY,
        ),
    )
    grant = view.access.grant
    assert grant is not None
    assert grant.status is GrantStatus.ACTIVE
    assert grant.break_glass
    clock.advance(timedelta(minutes=10))
    before = len(events(deps))

    with pytest.raises(Forbidden, match="break-glass grant cannot be extended"):
        grants.extend(deps, alice, grant.id, timedelta(minutes=20))

    with deps.store.transaction() as tx:
        assert tx.get_grant(grant.id).not_after == grant.not_after
    assert len(events(deps)) == before


def test_break_glass_skips_review_not_eligibility(tmp_path: Path, clock: FakeClock) -> None:
    """A member of the break-glass group who is not eligible for the role on the target is
    refused, online and offline, and nothing is written."""
    data = example_data(tmp_path)
    for person in data["users"]:
        if person["id"] == "mallory":
            person["groups"] = [*person["groups"], "breakglass-db"]
    deps = fake_deps(data, clock, {"ssh": FakeProvider()})
    ask = BreakGlassInput(
        role="db-admin",
        target="db-1",
        justification="primary is down and failover is stuck, need a shell",
        ssh_public_key=KEY,
    )
    with pytest.raises(Forbidden, match="not eligible"):
        break_glass(deps, user(deps, "mallory"), ask)
    assert events(deps) == []
    offline = OfflineAsk(
        role="db-admin",
        target="db-1",
        name="mallory",
        justification=ask.justification,
        ssh_public_key=KEY,
    )
    with pytest.raises(Forbidden, match="not eligible"):
        check_ask(deps.config, offline)
