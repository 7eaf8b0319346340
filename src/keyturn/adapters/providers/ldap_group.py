"""Temporary group membership in an LDAP directory (OpenLDAP or Active Directory).

Grant = add the user's DN to an allowlisted group's ``member`` (``groupOfNames``, AD groups) or
``uniqueMember`` (``groupOfUniqueNames``) attribute; revoke = delete that value. Both are
idempotent: LDAP result ``attributeOrValueExists`` (RFC 4511 §4.1.9, code 20) on add means the
membership was already there; ``noSuchAttribute`` (code 16) on delete means it was already gone.
Verification reads the group back with an LDAP Compare of the exact value (RFC 4511 §4.10).

Injection safety:

* The user's DN is *found*, never built: a search under ``ldap.users.base`` for
  ``(&(objectClass=OC)(ATTR=LOGIN))`` where LOGIN is escaped per RFC 4515 §3
  (``ldap.filter.escape_filter_chars``: ``*``, ``(``, ``)``, ``\\`` and NUL become ``\\2a`` …).
* DNs are parsed with ``ldap.dn.str2dn`` (RFC 4514) and compared in a normalised form
  (:func:`keyturn.config.normalize_dn`), never assembled by string concatenation.
* Only groups on the configuration's allowlist (``ldap.groups``) are ever written.

The bind password comes from an environment variable or a file (never the YAML), and is never
logged. Each thread has its own connection (python-ldap objects are not shared across threads);
a connection the server dropped (``SERVER_DOWN``, e.g. after a directory restart) is reopened
once, with tenacity, before the operation counts as failed.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import ldap
import ldap.filter
import tenacity

from keyturn.config import LdapConfig, LdapGroupConfig, RoleConfig, UserConfig, normalize_dn
from keyturn.domain.errors import ConfigError, ProviderError
from keyturn.domain.model import AccessRequest, Grant
from keyturn.ports import Granted, Holdings

T = TypeVar("T")

_UNREACHABLE = (ldap.SERVER_DOWN, ldap.TIMEOUT, ldap.CONNECT_ERROR, ldap.BUSY, ldap.UNAVAILABLE)


def read_bind_password(config: LdapConfig, environ: Mapping[str, str]) -> str:
    """The bind password from ``bind_password_env`` or ``bind_password_file``.

    Raises:
        ConfigError: the variable is unset or empty; the file is missing, empty, or readable
            by group or others (it must be 0600 or 0400, like a private key).
    """
    if config.bind_password_env is not None:
        value = environ.get(config.bind_password_env, "")
        if not value:
            raise ConfigError(
                f"ldap.bind_password_env: environment variable {config.bind_password_env} "
                "is not set or empty",
                path="ldap.bind_password_env",
            )
        return value
    path = config.bind_password_file
    if path is None:  # config validation guarantees one of the two
        raise ConfigError("ldap: no bind password source", path="ldap")
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"ldap.bind_password_file: cannot read {path}: {exc.strerror}",
            path="ldap.bind_password_file",
        ) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"ldap.bind_password_file: {path} is accessible by group or others; chmod 600 it",
            path="ldap.bind_password_file",
        )
    if not text:
        raise ConfigError(
            f"ldap.bind_password_file: {path} is empty", path="ldap.bind_password_file"
        )
    return text


def _error(what: str, exc: ldap.LDAPError) -> ProviderError:
    """A ProviderError that says what failed and why, without secrets."""
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    desc = str(info.get("desc", type(exc).__name__))
    extra = str(info.get("info", "")).strip()
    reason = f"{desc} ({extra})" if extra else desc
    if isinstance(exc, _UNREACHABLE):
        return ProviderError(f"{what}: the directory is unreachable: {reason}", retryable=True)
    if isinstance(exc, ldap.INVALID_CREDENTIALS):
        return ProviderError(
            f"{what}: the directory refused Keyturn's bind (invalid credentials for ldap.bind_dn)",
            retryable=True,
        )
    if isinstance(exc, ldap.INSUFFICIENT_ACCESS):
        return ProviderError(
            f"{what}: Keyturn's bind DN may not do this; check the directory's ACLs",
            retryable=True,
        )
    if isinstance(exc, ldap.OBJECT_CLASS_VIOLATION):
        return ProviderError(
            f"{what}: the directory refused the change ({reason}); a groupOfNames needs one "
            "member at least: keep a placeholder member listed in ldap.groups[].allow",
            retryable=True,
        )
    return ProviderError(f"{what}: {reason}", retryable=True)


@dataclass(frozen=True)
class _Membership:
    group: str
    attribute: str
    member: str


class LdapGroupProvider:
    """:class:`keyturn.ports.Provider` and :class:`keyturn.ports.ManagedPrivileges` for LDAP."""

    name = "ldap"

    def __init__(
        self,
        config: LdapConfig,
        *,
        roles: Mapping[str, RoleConfig],
        users: Mapping[str, UserConfig],
        password: str,
    ) -> None:
        self._config = config
        self._roles = dict(roles)
        self._users = dict(users)
        self._password = password
        self._local = threading.local()
        self._timeout = config.timeout.total_seconds()

    def update_directory(
        self, *, roles: Mapping[str, RoleConfig], users: Mapping[str, UserConfig]
    ) -> None:
        """Use the roles and users of a reloaded configuration (groups and the bind stay)."""
        self._roles, self._users = dict(roles), dict(users)

    # connection ------------------------------------------------------------------------------

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        conn = self._bound(self._config.bind_dn, self._password)
        self._local.conn = conn
        return conn

    def _bound(self, dn: str, password: str) -> Any:
        """A new connection (TLS as configured) bound as ``dn``; raises ``ldap.LDAPError``."""
        c = self._config
        conn = ldap.initialize(c.url.rstrip("/"), bytes_mode=False)
        conn.set_option(ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3)
        conn.set_option(ldap.OPT_REFERRALS, 0)
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, self._timeout)
        conn.set_option(ldap.OPT_TIMEOUT, self._timeout)
        if c.ca_file is not None:
            conn.set_option(ldap.OPT_X_TLS_CACERTFILE, str(c.ca_file))
            conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
            conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
        try:
            if c.start_tls:
                conn.start_tls_s()
            conn.simple_bind_s(dn, password)
        except ldap.LDAPError:
            with contextlib.suppress(ldap.LDAPError):
                conn.unbind_s()
            raise
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(ldap.LDAPError):  # the server may have closed it already
                conn.unbind_s()

    def _op(self, what: str, operation: Callable[[Any], T]) -> T:
        """Run ``operation`` on this thread's connection; reopen a dropped one once."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(2),
            retry=tenacity.retry_if_exception_type(ldap.SERVER_DOWN),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    try:
                        return operation(self._connection())
                    except ldap.LDAPError:
                        self._drop()
                        raise
        except ldap.LDAPError as exc:
            raise _error(what, exc) from exc
        raise AssertionError("unreachable: tenacity either returned or raised")

    def close(self) -> None:
        """Unbind this thread's connection (others close with their threads)."""
        self._drop()

    # lookups ---------------------------------------------------------------------------------
    def user_dn(self, user_id: str) -> str:
        """The DN of the directory entry of Keyturn user ``user_id``.

        Raises:
            ProviderError: not found (not retryable), ambiguous, or the directory failed.
        """
        user = self._users.get(user_id)
        login = user.login_in_directory if user is not None else user_id
        u = self._config.users
        query = (
            f"(&(objectClass={u.object_class})"
            f"({u.attribute}={ldap.filter.escape_filter_chars(login)}))"
        )
        scope = ldap.SCOPE_ONELEVEL if u.scope == "one" else ldap.SCOPE_SUBTREE
        found = self._op(
            f"find user {user_id}",
            lambda conn: conn.search_s(u.base, scope, query, ["1.1"]),
        )
        dns = [dn for dn, _attrs in found if dn]  # drop search references (dn None)
        if not dns:
            raise ProviderError(
                f"user {user_id} ({u.attribute}={login!r}) does not exist in the directory "
                f"under {u.base}",
                retryable=False,
            )
        if len(dns) > 1:
            raise ProviderError(
                f"user {user_id}: {len(dns)} directory entries match {u.attribute}={login!r}; "
                "refusing to guess",
                retryable=False,
            )
        return str(dns[0])

    def _group(self, dn: str) -> LdapGroupConfig:
        group = self._config.group(dn)
        if group is None:
            raise ProviderError(f"group {dn!r} is not on ldap.groups", retryable=False)
        return group

    def _membership(self, grant: Grant) -> _Membership:
        """What the grant added (from its credentials), or what it would add (from config)."""
        creds = grant.credentials
        if {"ldap_group", "ldap_attribute", "ldap_member"} <= creds.keys():
            return _Membership(creds["ldap_group"], creds["ldap_attribute"], creds["ldap_member"])
        role = self._roles.get(grant.role)
        dn = grant.privilege or (role.ldap.group if role is not None and role.ldap else None)
        if dn is None:
            raise ProviderError(f"grant {grant.id} names no directory group", retryable=False)
        group = self._group(dn)
        return _Membership(group.dn, group.member_attribute, self.user_dn(grant.user_id))

    # Provider --------------------------------------------------------------------------------
    def privilege(self, role: str, target: str) -> str | None:
        """The role's group as a normalised DN (grants of one user to one group overlap)."""
        config = self._roles.get(role)
        if config is None or config.ldap is None:
            raise ProviderError(f"role {role!r} has no directory group", retryable=False)
        return normalize_dn(config.ldap.group)

    def check(self) -> None:
        """Bind, and read every allowlisted group.

        Raises:
            ProviderError: unreachable, bind refused, or a group missing/unreadable.
        """
        for group in self._config.groups:
            self._read_group(group, ["1.1"])

    def _read_group(self, group: LdapGroupConfig, attrs: list[str]) -> list[Any]:
        def read(conn: Any) -> list[Any]:
            return list(conn.search_s(group.dn, ldap.SCOPE_BASE, "(objectClass=*)", attrs))

        return self._op(f"read group {group.dn}", read)

    def grant(self, grant: Grant, request: AccessRequest) -> Granted:
        """Add the user's DN to the group (``attributeOrValueExists`` = already a member)."""
        m = self._membership(grant)
        present = self._add(m)
        return Granted(
            {"ldap_group": m.group, "ldap_attribute": m.attribute, "ldap_member": m.member},
            already_present=present,
        )

    def _add(self, m: _Membership) -> bool:
        def add(conn: Any) -> bool:
            try:
                conn.modify_s(m.group, [(ldap.MOD_ADD, m.attribute, [m.member.encode()])])
            except ldap.TYPE_OR_VALUE_EXISTS:
                return True
            return False

        return self._op(f"add {m.member} to {m.group}", add)

    def _remove(self, m: _Membership) -> bool:
        def remove(conn: Any) -> bool:
            try:
                conn.modify_s(m.group, [(ldap.MOD_DELETE, m.attribute, [m.member.encode()])])
            except ldap.NO_SUCH_ATTRIBUTE:
                return True
            return False

        return self._op(f"remove {m.member} from {m.group}", remove)

    def _is_member(self, m: _Membership) -> bool:
        return bool(
            self._op(
                f"read {m.group}",
                lambda conn: conn.compare_s(m.group, m.attribute, m.member.encode()),
            )
        )

    def verify_granted(self, grant: Grant) -> bool:
        """The group holds the user's DN (LDAP Compare, read from the directory)."""
        return self._is_member(self._membership(grant))

    def extend(self, grant: Grant, request: AccessRequest) -> dict[str, str]:
        """Membership has no end date in the directory: nothing changes, no gap."""
        return dict(grant.credentials)

    def revoke(self, grant: Grant, now: datetime) -> bool:
        """Delete the user's DN from the group; True if it was already gone."""
        return self._remove(self._membership(grant))

    def verify_revoked(self, grant: Grant, now: datetime) -> bool:
        """The group no longer holds the user's DN (LDAP Compare)."""
        return not self._is_member(self._membership(grant))

    # ManagedPrivileges -----------------------------------------------------------------------
    def holdings(self) -> list[Holdings]:
        """Every allowlisted group's members, read from the directory."""
        out = []
        for group in self._config.groups:
            found = self._read_group(group, [group.member_attribute])
            values: list[bytes] = []
            for _dn, attrs in found:
                for name, vals in (attrs or {}).items():
                    if name.lower() == group.member_attribute.lower():
                        values.extend(vals)
            out.append(
                Holdings(
                    privilege=normalize_dn(group.dn),
                    members=frozenset(_normal_member(v.decode()) for v in values),
                    allowed=frozenset(normalize_dn(a) for a in group.allow),
                    enforce=group.mode == "enforce",
                )
            )
        return out

    def identity(self, user_id: str) -> str | None:
        """The user's normalised DN, or None if the directory has no entry for them."""
        try:
            return normalize_dn(self.user_dn(user_id))
        except ProviderError as exc:
            if exc.retryable:
                raise
            return None

    def remove_holder(self, privilege: str, identity: str) -> bool:
        """Delete ``identity`` (a DN) from the group; True if already gone."""
        group = self._group(privilege)
        return self._remove(_Membership(group.dn, group.member_attribute, identity))

    def add_holder(self, privilege: str, identity: str) -> bool:
        """Add ``identity`` (a DN) to the group; True if already there."""
        group = self._group(privilege)
        return self._add(_Membership(group.dn, group.member_attribute, identity))

    # emergency account (break-glass kit rotation) ----------------------------------------------
    def set_password(self, dn: str, password: str) -> None:
        """Replace the password of the entry ``dn`` with the RFC 3062 Password Modify extended
        operation (the directory hashes it by its own policy). The password is never logged.

        Raises:
            ProviderError: the directory refused or failed.
        """
        self._op("set the emergency account's password", lambda c: c.passwd_s(dn, None, password))

    def check_password(self, dn: str, password: str) -> bool:
        """Read back: does a simple bind as ``dn`` with ``password`` succeed (own connection)?

        An empty password is False without asking: a simple bind with a DN and no password is
        an unauthenticated bind (RFC 4513 5.1.2), which some directories accept as anonymous.

        Raises:
            ProviderError: the directory cannot be reached (not a wrong password: that is False).
        """
        if not password:
            return False
        try:
            conn = self._bound(dn, password)
        except ldap.INVALID_CREDENTIALS:
            return False
        except ldap.LDAPError as exc:
            raise _error("check the emergency account's password", exc) from exc
        with contextlib.suppress(ldap.LDAPError):
            conn.unbind_s()
        return True


def _normal_member(value: str) -> str:
    """A member value as a normalised DN (``uniqueMember`` may carry ``#'0'B`` UIDs: kept)."""
    try:
        return normalize_dn(value)
    except ldap.DECODING_ERROR:
        return value


def build_ldap_provider(
    config: LdapConfig,
    roles: Mapping[str, RoleConfig],
    users: Mapping[str, UserConfig],
    environ: Mapping[str, str] | None = None,
) -> LdapGroupProvider:
    """Read the bind password and build the provider (no connection is made yet).

    Raises:
        ConfigError: the bind password cannot be read.
    """
    password = read_bind_password(config, os.environ if environ is None else environ)
    return LdapGroupProvider(config, roles=roles, users=users, password=password)


__all__ = ["LdapGroupProvider", "build_ldap_provider", "read_bind_password"]
