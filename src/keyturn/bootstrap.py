"""The composition root: the only module that names concrete adapters.

Nothing is built at import time; :func:`build` wires a :class:`~keyturn.service.deps.Deps` from a
loaded configuration.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from keyturn.adapters.clock import SystemClock
from keyturn.adapters.notifiers.webhook import LogNotifier, WebhookNotifier
from keyturn.adapters.providers.ldap_group import LdapGroupProvider, build_ldap_provider
from keyturn.adapters.providers.ssh_ca import SshCertificateProvider, load_or_create_ca
from keyturn.adapters.store.sql import SqlStore, create_engine, migrate
from keyturn.config import KeyturnConfig, LoadedConfig
from keyturn.domain.errors import ConfigError, ProviderError
from keyturn.domain.policy import PolicyEngine
from keyturn.ports import Clock, Notifier, Provider, Store
from keyturn.service.deps import Deps, random_id, random_serial

FAULT_ENV = "KEYTURN_FAULT_BLOCK_AT"
"""Fault injection for crash tests: when set to a provider step (``grant``, ``verify_granted``,
``revoke``, ``verify_revoked``), every provider blocks forever at that step, so a test can
SIGKILL the process there. Never set it in production."""


@dataclass
class App:
    """A wired Keyturn: services' dependencies plus the adapters entry points need directly."""

    deps: Deps
    loaded: LoadedConfig
    ssh: SshCertificateProvider
    store: SqlStore
    closers: list[Callable[[], None]] = field(default_factory=list)

    def readiness(self) -> dict[str, str]:
        """Each provider's check: ``ok`` or ``failed: <reason>`` (``/readyz``, ``serve``)."""
        checks = {}
        for name, provider in self.deps.providers.items():
            try:
                provider.check()
                checks[name] = "ok"
            except ProviderError as exc:
                checks[name] = f"failed: {exc.message}"
        return checks

    def close(self) -> None:
        """Deliver queued alerts, close directory connections and the store's connections."""
        for close in self.closers:
            close()
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
    environ: Mapping[str, str] | None = None,
) -> App:
    """Wire Keyturn from configuration: migrate the store, load/create the CA, build providers.

    Args:
        environ: where secrets named by the configuration are read (default ``os.environ``).

    Raises:
        ConfigError: the CA key is unsafe or unreadable, the policy does not compile, or a
            secret (LDAP bind password, webhook token) cannot be read.
    """
    env = os.environ if environ is None else environ
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
    closers: list[Callable[[], None]] = []
    providers: dict[str, Provider] = {"ssh": ssh}
    if config.ldap is not None:
        directory: LdapGroupProvider = build_ldap_provider(
            config.ldap,
            roles={r.name: r for r in config.roles},
            users={u.id: u for u in config.users},
            environ=env,
        )
        providers["ldap"] = directory
        closers.append(directory.close)
    providers.update(extra_providers or {})
    if env.get(FAULT_ENV):
        from keyturn.testing import BlockingProvider

        providers = {n: BlockingProvider(p, env[FAULT_ENV]) for n, p in providers.items()}
    executor = ThreadPoolExecutor(
        max_workers=config.server.revoke_concurrency, thread_name_prefix="keyturn-revoke"
    )
    closers.append(executor.shutdown)
    notifier = _notifier(config, env)
    if isinstance(notifier, WebhookNotifier):
        closers.append(notifier.close)

    deps = Deps(
        config=config,
        policy=policy,
        store=store,
        clock=the_clock,
        providers=providers,
        new_id=new_id,
        new_serial=new_serial,
        notifier=notifier,
        executor=executor,
    )
    return App(deps=deps, loaded=loaded, ssh=ssh, store=store, closers=closers)


def _notifier(config: KeyturnConfig, env: Mapping[str, str]) -> Notifier:
    settings = config.notifier
    if settings.webhook_url is None:
        return LogNotifier()
    token = None
    if settings.webhook_token_env is not None:
        token = env.get(settings.webhook_token_env)
        if not token:
            raise ConfigError(
                f"notifier.webhook_token_env: environment variable {settings.webhook_token_env} "
                "is not set or empty",
                path="notifier.webhook_token_env",
            )
    return WebhookNotifier(settings.webhook_url, token=token, timeout=settings.timeout)
