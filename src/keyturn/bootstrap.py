"""The composition root: the only module that names concrete adapters.

Nothing is built at import time; :func:`build` wires a :class:`~keyturn.service.deps.Deps` from a
loaded configuration.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from keyturn.adapters.clock import SystemClock
from keyturn.adapters.notifiers.email import SmtpNotifier
from keyturn.adapters.notifiers.fanout import FanoutNotifier
from keyturn.adapters.notifiers.webhook import LogNotifier, WebhookNotifier
from keyturn.adapters.oncall_sources import read_source
from keyturn.adapters.providers.ldap_group import LdapGroupProvider, build_ldap_provider
from keyturn.adapters.providers.ssh_ca import SshCertificateProvider, load_or_create_ca
from keyturn.adapters.store.sql import SqlStore, create_engine, migrate
from keyturn.config import KeyturnConfig, LoadedConfig, ScheduleConfig, UserConfig
from keyturn.domain.errors import ConfigError, ProviderError
from keyturn.domain.policy import PolicyEngine
from keyturn.ports import Clock, Notifier, Provider, Store
from keyturn.service.deps import Deps, random_id, random_serial
from keyturn.service.oncall import OnCallCollector, OnCallSchedules

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
    environ: Mapping[str, str] = field(default_factory=dict)
    _digests: tuple[KeyturnConfig, dict[str, UserConfig]] | None = None
    _reload_lock: threading.Lock = field(default_factory=threading.Lock)

    def users_by_token_digest(self) -> dict[str, UserConfig]:
        """Users by the SHA-256 of their API token, for the configuration in force."""
        config = self.deps.config
        if self._digests is None or self._digests[0] is not config:
            users = {u.token_sha256: u for u in config.users if u.token_sha256}
            self._digests = (config, users)
        return self._digests[1]

    @property
    def oncall(self) -> OnCallSchedules | None:
        """The on-call schedules in force (``deps.oncall``; a reload replaces them)."""
        schedules = self.deps.oncall
        return schedules if isinstance(schedules, OnCallSchedules) else None

    def oncall_status(self) -> dict[str, dict[str, object]]:
        """Each on-call schedule's source state (``/readyz`` details; never blocks readiness:
        a failed source fails closed -- nobody counts as on call for it)."""
        return self.oncall.status() if self.oncall is not None else {}

    def reload(self, loaded: LoadedConfig, actor: str) -> dict[str, object]:
        """Apply a new configuration without a restart (``SIGHUP``, ``POST /v1/admin/reload``).

        The new file must validate, its policy must compile and its embedded policy tests
        (``policy.tests``) must pass; settings that need a restart (``store``, ``server``,
        ``ssh_ca``, ``ldap``, ``notifier``) must be unchanged. Otherwise the old configuration
        stays and the refusal is an audit event too.

        Returns:
            ``{applied, old_sha256, new_sha256, reason?}``.
        """
        from keyturn.policy_cases import run_embedded
        from keyturn.service import alerts, audit_log

        with self._reload_lock:
            old = self.loaded
            result: dict[str, object] = {"old_sha256": old.sha256, "new_sha256": loaded.sha256}
            try:
                restart = [
                    name
                    for name in ("store", "server", "ssh_ca", "ldap", "notifier")
                    if getattr(old.config, name) != getattr(loaded.config, name)
                ]
                if restart:
                    raise ConfigError(
                        f"changes to {', '.join(restart)} need a restart; nothing was applied",
                        path=restart[0],
                    )
                policy = PolicyEngine(loaded.config)
                failures = run_embedded(loaded, policy)
                if failures:
                    raise ConfigError(
                        f"{len(failures)} embedded policy test(s) fail: {failures[0]}",
                        path="policy.tests",
                    )
            except ConfigError as exc:
                return self._refused(actor, result, exc.message)
            self._apply(loaded, policy)
            alerts.remap(self.deps)
            result["applied"] = True
            self.deps.metrics.config_reloads.labels("applied").inc()
            audit_log.record(self.deps, actor, "config.reloaded", result)
            return result

    def reload_file(self, actor: str) -> dict[str, object]:
        """Re-read the file this app was started from and :meth:`reload` it; an unreadable or
        invalid file is refused (and audited) the same way."""
        from keyturn.config import load_config

        try:
            loaded = load_config(Path(self.loaded.source))
        except ConfigError as exc:
            return self._refused(actor, {"old_sha256": self.loaded.sha256}, exc.message)
        return self.reload(loaded, actor)

    def _refused(self, actor: str, result: dict[str, object], reason: str) -> dict[str, object]:
        """Record a refused reload (metric, audit event) and say so; nothing was applied."""
        from keyturn.service import audit_log

        result = result | {"applied": False, "reason": reason}
        self.deps.metrics.config_reloads.labels("refused").inc()
        audit_log.record(self.deps, actor, "config.reload_refused", result)
        return result

    def _apply(self, loaded: LoadedConfig, policy: PolicyEngine) -> None:
        config = loaded.config
        roles = {r.name: r for r in config.roles}
        users = {u.id: u for u in config.users}
        for provider in self.deps.providers.values():
            update = getattr(provider, "update_directory", None)
            if update is not None:
                update(roles=roles, users=users)
        old_oncall = self.oncall
        oncall = _oncall(loaded, self.deps.clock, self.environ)
        self.deps.config, self.deps.policy, self.loaded = config, policy, loaded
        self.deps.oncall = oncall
        if old_oncall is not None:
            old_oncall.close()

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
        """Stop on-call refreshes, deliver queued notifications, close directory connections
        and the store's connections."""
        if self.oncall is not None:
            self.oncall.close()
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
    notifier = _notifier(config, env, the_clock)
    closers.append(notifier.close)
    oncall = _oncall(loaded, the_clock, env)

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
        oncall=oncall,
    )
    app = App(
        deps=deps,
        loaded=loaded,
        ssh=ssh,
        store=store,
        closers=closers,
        environ=env,
    )
    deps.metrics.registry.register(_CurrentOnCall(app))
    return app


class _CurrentOnCall(Collector):
    """The on-call gauges of whichever schedules are in force (a reload replaces them)."""

    def __init__(self, app: App) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        if self._app.oncall is None:
            return iter(())
        return OnCallCollector(self._app.oncall).collect()


def _oncall(loaded: LoadedConfig, clock: Clock, env: Mapping[str, str]) -> OnCallSchedules | None:
    """On-call schedules from the configuration, first read now, refreshed in the background."""
    settings = loaded.config.oncall
    if not settings.schedules:
        return None

    def read(schedule: ScheduleConfig) -> bytes | None:
        if schedule.ical is None:
            return None
        return read_source(
            schedule.ical,
            resolve=loaded.resolve,
            timeout=settings.timeout,
            max_bytes=settings.max_bytes,
        )

    schedules = OnCallSchedules(loaded.config, read, clock)
    schedules.start()
    return schedules


def _notifier(config: KeyturnConfig, env: Mapping[str, str], clock: Clock) -> FanoutNotifier:
    """Log always; the JSON webhook and e-mail when configured. Secrets come from ``env``."""
    settings = config.notifier
    adapters: list[Notifier] = []
    if settings.webhook_url is None:
        adapters.append(LogNotifier())
    else:
        token = _secret(env, settings.webhook_token_env, "notifier.webhook_token_env")
        adapters.append(
            WebhookNotifier(settings.webhook_url, token=token, timeout=settings.timeout)
        )
    if settings.smtp is not None:
        password = _secret(env, settings.smtp.password_env, "notifier.smtp.password_env")
        adapters.append(SmtpNotifier(settings.smtp, password=password, clock=clock))
    return FanoutNotifier(adapters)


def _secret(env: Mapping[str, str], name: str | None, path: str) -> str | None:
    """The value of environment variable ``name`` (None when no variable is configured).

    Raises:
        ConfigError: the variable is configured but unset or empty.
    """
    if name is None:
        return None
    value = env.get(name)
    if not value:
        raise ConfigError(f"{path}: environment variable {name} is not set or empty", path=path)
    return value
