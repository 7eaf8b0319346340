"""The composition root: the only module that names concrete adapters.

Nothing is built at import time; :func:`build` wires a :class:`~keyturn.service.deps.Deps` from a
loaded configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from keyturn.adapters.clock import SystemClock
from keyturn.adapters.providers.ssh_ca import SshCertificateProvider, load_or_create_ca
from keyturn.adapters.store.sql import SqlStore, create_engine, migrate
from keyturn.config import LoadedConfig
from keyturn.domain.policy import PolicyEngine
from keyturn.ports import Clock, Provider, Store
from keyturn.service.deps import Deps, random_id, random_serial


@dataclass
class App:
    """A wired Keyturn: services' dependencies plus the adapters entry points need directly."""

    deps: Deps
    loaded: LoadedConfig
    ssh: SshCertificateProvider
    store: SqlStore

    def close(self) -> None:
        """Release the store's connections."""
        self.store.close()


def _revoked_serials(store: Store, skew: timedelta) -> Callable[[datetime], list[int]]:
    """Serials stay listed until ``not_after + skew``: a target whose clock is behind by up to
    ``skew`` still accepts the certificate until then."""

    def read(now: datetime) -> list[int]:
        with store.transaction() as tx:
            return tx.early_revoked_serials(now - skew)

    return read


def build(
    loaded: LoadedConfig,
    *,
    clock: Clock | None = None,
    extra_providers: dict[str, Provider] | None = None,
    new_id: Callable[[str], str] = random_id,
    new_serial: Callable[[], int] = random_serial,
) -> App:
    """Wire Keyturn from configuration: migrate the store, load/create the CA, build providers.

    Raises:
        ConfigError: the CA key is unsafe or unreadable, or the policy does not compile.
    """
    config = loaded.config
    policy = PolicyEngine(config)
    ca_path = config.ssh_ca.key_path
    ca_key = load_or_create_ca(ca_path)
    engine = create_engine(config.store.url)
    migrate(engine)
    store = SqlStore(engine)
    the_clock = clock or SystemClock()
    krl_path = config.ssh_ca.krl_path or ca_path.with_name("revoked.krl")
    ssh = SshCertificateProvider(
        ca_key=ca_key,
        ca_key_path=ca_path,
        krl_path=krl_path,
        roles={r.name: r for r in config.roles},
        clock_skew=config.ssh_ca.clock_skew,
        revoked_serials=_revoked_serials(store, config.ssh_ca.clock_skew),
    )
    ssh.ensure_krl(the_clock.now())
    providers: dict[str, Provider] = {"ssh": ssh, **(extra_providers or {})}
    deps = Deps(
        config=config,
        policy=policy,
        store=store,
        clock=the_clock,
        providers=providers,
        new_id=new_id,
        new_serial=new_serial,
    )
    return App(deps=deps, loaded=loaded, ssh=ssh, store=store)
