"""The ports and configuration every service function works with."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from keyturn.config import KeyturnConfig, UserConfig
from keyturn.domain.errors import ProviderError
from keyturn.domain.policy import PolicyEngine
from keyturn.ports import Clock, ManagedPrivileges, Notifier, OnCall, Provider, Store
from keyturn.service.metrics import Metrics


def random_id(prefix: str) -> str:
    """A random id such as ``req_3f9a…`` (80 bits from :mod:`secrets`)."""
    return f"{prefix}_{secrets.token_hex(10)}"


def random_serial() -> int:
    """A random positive 63-bit certificate serial (fits PostgreSQL ``bigint``)."""
    return secrets.randbelow(2**63 - 2) + 1


class InFlight:
    """Ids of grants this instance's executor is working on (thread-safe)."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def add(self, grant_id: str) -> None:
        """Mark as being worked on."""
        with self._lock:
            self._ids.add(grant_id)

    def discard(self, grant_id: str) -> None:
        """Done with it."""
        with self._lock:
            self._ids.discard(grant_id)

    def __contains__(self, grant_id: object) -> bool:
        with self._lock:
            return grant_id in self._ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)


def _default_notifier() -> Notifier:
    from keyturn.adapters.notifiers.webhook import LogNotifier

    return LogNotifier()


@dataclass
class Deps:
    """What services need: configuration, policy, store, clock, providers, id/serial sources.

    ``new_id`` and ``new_serial`` are injectable so tests can make runs reproducible.
    ``notifier`` receives alerts (a failing revocation); ``metrics`` counts what happens;
    ``executor`` (when set) runs the worker's provider calls for many grants concurrently.
    ``oncall`` answers who is on call (None: no schedules, nobody is on call).
    """

    config: KeyturnConfig
    policy: PolicyEngine
    store: Store
    clock: Clock
    providers: dict[str, Provider]
    new_id: Callable[[str], str] = field(default=random_id)
    new_serial: Callable[[], int] = field(default=random_serial)
    notifier: Notifier = field(default_factory=_default_notifier)
    metrics: Metrics = field(default_factory=Metrics)
    executor: Executor | None = None
    in_flight: InFlight = field(default_factory=InFlight)
    oncall: OnCall | None = None

    def __post_init__(self) -> None:
        self.metrics.count_grants_in(self.store)

    def provider(self, name: str) -> Provider:
        """The provider bound to ``name``.

        Raises:
            ProviderError: no such provider is configured (not retryable).
        """
        try:
            return self.providers[name]
        except KeyError as exc:
            raise ProviderError(f"no provider {name!r} is configured", retryable=False) from exc

    def managed(self) -> list[ManagedPrivileges]:
        """The providers whose privileges reconciliation compares with grants."""
        return [p for p in self.providers.values() if isinstance(p, ManagedPrivileges)]

    def is_admin(self, user: UserConfig) -> bool:
        """True if the user may revoke any grant and see every request."""
        admins = self.config.admins
        return user.id in admins.users or bool(set(user.groups) & set(admins.groups))
