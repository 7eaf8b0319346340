"""A break-glass grant keeps its cap: extension is refused, unlike a grant of the same role made
through the policy."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keyturn.domain.errors import Forbidden
from keyturn.domain.model import GrantStatus
from keyturn.service import grants
from keyturn.service.break_glass import BreakGlassInput, break_glass
from keyturn.service.deps import Deps
from keyturn.testing import FakeClock
from tests.conftest import events, user

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
