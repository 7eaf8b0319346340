"""A synthetic directory load, shared by the two-worker test and ``bench/revocation_lag.py``.

``users`` Keyturn users ``u000…`` (group ``sre``) and ``groups`` directory groups ``g00…``
(groupOfNames, each holding the allowlisted placeholder ``svc-backup``, since a groupOfNames
needs one member), one role ``r00…`` per group on target ``corp-directory``, auto-approved.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from keyturn.bootstrap import App
from keyturn.domain.model import GrantStatus
from keyturn.lab import Slapd

TARGET = "corp-directory"
PLACEHOLDER = "svc-backup"
BIND_ENV = "KEYTURN_LDAP_PASSWORD"  # ldap.bind_password_env: the variable's name
UNFINISHED = (
    GrantStatus.PROVISIONING,
    GrantStatus.ACTIVE,
    GrantStatus.REVOKING,
    GrantStatus.REVOKE_FAILED,
)


def uid(i: int) -> str:
    """The i-th user's id (and directory uid)."""
    return f"u{i:03d}"


def role(j: int) -> str:
    """The j-th role, bound to the j-th group."""
    return f"r{j:02d}"


def seed(server: Slapd, users: int, groups: int) -> tuple[dict[str, str], list[str]]:
    """Add the placeholder, the users and the groups; return {uid: DN} and the group DNs."""
    people = {PLACEHOLDER: server.add_user(PLACEHOLDER)}
    people |= {uid(i): server.add_user(uid(i)) for i in range(users)}
    dns = [server.add_group(f"g{j:02d}", members=[people[PLACEHOLDER]]) for j in range(groups)]
    return people, dns


def config_data(
    workdir: Path,
    server: Slapd,
    store_url: str,
    groups: list[str],
    placeholder: str,
    *,
    users: int,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The configuration (as parsed YAML) for this load; ``settings`` go into ``server``."""
    return {
        "version": 1,
        "server": {"worker_max_sleep": "PT0.2S", "reconcile_interval": "PT1H"} | (settings or {}),
        "store": {"url": store_url},
        "ssh_ca": {"key_path": str(workdir / "ca" / "user_ca")},
        "ldap": ldap_section(server, groups, placeholder),
        "users": [{"id": uid(i), "name": f"User {i}", "groups": ["sre"]} for i in range(users)],
        "targets": [{"name": TARGET, "labels": {"kind": "directory"}}],
        "roles": [
            {"name": role(j), "tier": "standard", "provider": "ldap", "ldap": {"group": dn}}
            for j, dn in enumerate(groups)
        ],
        "eligibility": [
            {
                "groups": ["sre"],
                "roles": [role(j) for j in range(len(groups))],
                "targets": {"names": [TARGET]},
            }
        ],
        "policy": {
            "rules": [
                {
                    "name": "standard-auto-approve",
                    "when": 'role.tier == "standard" && request.duration <= 14400',
                    "effect": "auto_approve",
                }
            ]
        },
    }


def ldap_section(server: Slapd, groups: list[str], placeholder: str) -> dict[str, Any]:
    """The ``ldap`` configuration for the lab slapd: Keyturn's service account, people by
    ``uid``, each group managed in ``report`` mode with ``placeholder`` allowlisted."""
    return {
        "url": server.url,
        "bind_dn": server.service_dn,
        "bind_password_env": BIND_ENV,
        "users": {
            "base": server.people_base,
            "attribute": "uid",
            "object_class": "inetOrgPerson",
        },
        "groups": [
            {"dn": dn, "member_attribute": "member", "mode": "report", "allow": [placeholder]}
            for dn in groups
        ],
    }


class CountingProvider:
    """Wraps a provider: counts revoke calls per grant (more than one is wasted directory work)
    and, with ``delay`` > 0 seconds, sleeps that long before each revoke and verify call, like
    a directory across a network (the lab slapd answers in well under a millisecond)."""

    def __init__(self, inner: Any, delay: float) -> None:
        self._inner = inner
        self._delay = delay
        self._lock = threading.Lock()
        self.revokes: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def revoke(self, grant: Any, now: datetime) -> bool:
        with self._lock:
            self.revokes[grant.id] += 1
        if self._delay:
            time.sleep(self._delay)
        return bool(self._inner.revoke(grant, now))

    def verify_revoked(self, grant: Any, now: datetime) -> bool:
        if self._delay:
            time.sleep(self._delay)
        return bool(self._inner.verify_revoked(grant, now))


def counts(app: App) -> dict[GrantStatus, int]:
    """Grants per state."""
    with app.store.transaction() as tx:
        return tx.grant_counts()


def percentile(values: list[float] | list[int], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    rank = max(0, math.ceil(p / 100 * len(ordered)) - 1)
    return float(ordered[rank])
