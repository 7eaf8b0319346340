"""The ports and configuration every service function works with."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from keyturn.config import KeyturnConfig, UserConfig
from keyturn.domain.errors import ProviderError
from keyturn.domain.policy import PolicyEngine
from keyturn.ports import Clock, Provider, Store


def random_id(prefix: str) -> str:
    """A random id such as ``req_3f9a…`` (80 bits from :mod:`secrets`)."""
    return f"{prefix}_{secrets.token_hex(10)}"


def random_serial() -> int:
    """A random positive 63-bit certificate serial (fits PostgreSQL ``bigint``)."""
    return secrets.randbelow(2**63 - 2) + 1


@dataclass
class Deps:
    """What services need: configuration, policy, store, clock, providers, id/serial sources.

    ``new_id`` and ``new_serial`` are injectable so tests can make runs reproducible.
    """

    config: KeyturnConfig
    policy: PolicyEngine
    store: Store
    clock: Clock
    providers: dict[str, Provider]
    new_id: Callable[[str], str] = field(default=random_id)
    new_serial: Callable[[], int] = field(default=random_serial)

    def provider(self, name: str) -> Provider:
        """The provider bound to ``name``.

        Raises:
            ProviderError: no such provider is configured (not retryable).
        """
        try:
            return self.providers[name]
        except KeyError as exc:
            raise ProviderError(f"no provider {name!r} is configured", retryable=False) from exc

    def is_admin(self, user: UserConfig) -> bool:
        """True if the user may revoke any grant and see every request."""
        admins = self.config.admins
        return user.id in admins.users or bool(set(user.groups) & set(admins.groups))
