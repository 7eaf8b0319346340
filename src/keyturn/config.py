"""The configuration file: YAML → pydantic models, with errors that name the key path.

One YAML file (``--config PATH`` or ``KEYTURN_CONFIG``) declares users, targets, roles,
eligibility, policy rules, the store and the SSH CA. Unknown keys are errors. Every error raised by
:func:`load_config` is a :class:`~keyturn.domain.errors.ConfigError` whose ``details['path']`` is
key path (``roles[1].max_duration``) and whose message says what was expected.

``keyturn config schema`` prints :func:`json_schema`; ``keyturn config check FILE`` runs
:func:`load_config` and the policy compiler.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
import string
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import ldap
import ldap.dn
import yaml
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from keyturn.domain.durations import parse_iso_duration, to_iso_duration
from keyturn.domain.errors import ConfigError, InvalidInput
from keyturn.domain.model import Outcome

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
"""Ids, names of roles, targets and groups: letters, digits, ``.``, ``_``, ``-``; ≤ 63 chars.

Restricting names is what makes them safe inside SSH principals, LDAP values, SQL identifiers
and log lines without further escaping at every use."""

PRINCIPAL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+=-]{0,127}$")
PRINCIPAL_FIELDS = frozenset({"role", "target", "user"})

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def _iso_duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 duration string such as 'PT30M'")
    try:
        return parse_iso_duration(value)
    except InvalidInput as exc:
        raise ValueError(exc.message) from exc


Duration = Annotated[
    timedelta,
    BeforeValidator(_iso_duration),
    PlainSerializer(to_iso_duration, return_type=str),
    WithJsonSchema({"type": "string", "format": "duration", "examples": ["PT30M", "PT4H"]}),
]


def _check_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA time zone {value!r}") from exc
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UserConfig(_Strict):
    """A principal. ``id`` is immutable and is what every record names; never the display name."""

    id: Name
    name: str = Field(min_length=1, max_length=200)
    email: str | None = None
    groups: tuple[Name, ...] = ()
    token_sha256: Sha256Hex | None = Field(
        default=None, description="SHA-256 (hex) of the user's API token; never the token"
    )
    directory_login: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="the user's login in the directory (uid, sAMAccountName); default: id",
    )

    @property
    def login_in_directory(self) -> str:
        """The value searched for in ``ldap.users.attribute`` (escaped per RFC 4515 at use)."""
        return self.directory_login or self.id


class TargetConfig(_Strict):
    """A system roles apply to, and how to reach it."""

    name: Name
    labels: dict[Name, Annotated[str, Field(max_length=200)]] = {}
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    port: int = Field(default=22, ge=1, le=65535)
    login: Name = Field(default="root", description="the OS account the certificate logs in as")
    host_key: str | None = Field(
        default=None,
        max_length=16000,
        description="the target's SSH host key as an OpenSSH public key line (RFC 4253 §6.6); "
        "the gateway connects only to targets whose host key it knows",
    )

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            load_ssh_public_key(value.strip().encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError("host_key must be an OpenSSH public key line") from exc
        return value.strip()


class SshRoleConfig(_Strict):
    """How a role's OpenSSH user certificate is built (PROTOCOL.certkeys)."""

    principals: tuple[str, ...] = Field(
        default=("{role}@{target}",),
        min_length=1,
        description="principal templates; fields {role}, {target}, {user}",
    )
    allow_pty: bool = True
    allow_port_forwarding: bool = False
    allow_agent_forwarding: bool = False
    allow_x11_forwarding: bool = False
    allow_user_rc: bool = False
    force_command: str | None = Field(default=None, min_length=1, max_length=1000)
    source_address: tuple[str, ...] = ()
    record_input: bool = Field(
        default=False,
        description="gateway: keep keystrokes in the recording (off: passwords typed at prompts "
        "would be kept too)",
    )
    gateway_only: bool = Field(
        default=False,
        description="certificates of this role open no target directly (their one principal is "
        "keyturn-gateway-only): every session goes through the recording gateway",
    )
    file_transfer: Literal["refuse", "record"] = Field(
        default="refuse",
        description="gateway: the sftp subsystem and scp are refused, or relayed with every "
        "file name and byte count recorded",
    )

    @field_validator("source_address")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not an address or CIDR block") from exc
        return value

    @field_validator("force_command")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and any(ord(c) < 32 for c in value):
            raise ValueError("force_command must be one line without control characters")
        return value


def _dn(value: object) -> str:
    """A distinguished name, checked to parse per RFC 4514 (``ldap.dn.str2dn``)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a distinguished name such as 'cn=db-admins,ou=groups,dc=x'")
    try:
        parsed = ldap.dn.str2dn(value)
    except ldap.DECODING_ERROR as exc:
        raise ValueError(f"{value!r} is not a valid DN (RFC 4514)") from exc
    if not parsed:
        raise ValueError("the DN is empty")
    return value


DistinguishedName = Annotated[
    str,
    BeforeValidator(_dn),
    WithJsonSchema({"type": "string", "examples": ["cn=db-admins,ou=groups,dc=example,dc=org"]}),
]


def normalize_dn(dn: str) -> str:
    """A DN in one canonical spelling for comparisons: parsed (RFC 4514), attribute types and
    values lower-cased, re-serialised. Names in directories compare case-insensitively
    (``distinguishedNameMatch`` over ``caseIgnoreMatch`` attributes such as cn, uid, ou, dc).

    Raises:
        ldap.DECODING_ERROR: not a DN.
    """
    rdns = ldap.dn.str2dn(dn)
    lowered = [[(t.lower(), v.lower(), kind) for t, v, kind in rdn] for rdn in rdns]
    return str(ldap.dn.dn2str(lowered))


class LdapRoleConfig(_Strict):
    """The directory group a role's grant adds the user to (must be on ``ldap.groups``)."""

    group: DistinguishedName


class BreakGlassRoleConfig(_Strict):
    """Who may break glass for a role (no review, loud, capped, reviewed afterwards)."""

    group: Name = Field(description="only members of this group may break glass for the role")
    max_duration: Duration = Field(
        default=timedelta(hours=1),
        description="the cap of a break-glass window (online and offline); ≤ the role's maximum",
    )


class RoleConfig(_Strict):
    """A named privilege with a tier, durations and a provider binding."""

    name: Name
    description: str = ""
    tier: Name = "standard"
    default_duration: Duration = timedelta(minutes=30)
    max_duration: Duration = Field(
        default=timedelta(hours=4),
        description="longest request, and longest total window including extensions",
    )
    provider: Literal["ssh", "ldap"] = "ssh"
    ssh: SshRoleConfig = SshRoleConfig()
    ldap: LdapRoleConfig | None = None
    break_glass: BreakGlassRoleConfig | None = Field(
        default=None, description="emergency access to this role; none: break-glass is refused"
    )


class TargetSelector(_Strict):
    """Targets by name and/or by labels (every listed label must match)."""

    names: tuple[Name, ...] = ()
    labels: dict[Name, str] = {}

    def matches(self, target: TargetConfig) -> bool:
        """True if the target is named, or carries every selector label."""
        if target.name in self.names:
            return True
        return bool(self.labels) and all(target.labels.get(k) == v for k, v in self.labels.items())


class EligibilityConfig(_Strict):
    """Who may request which roles on which targets (Entra "eligible assignment")."""

    users: tuple[Name, ...] = ()
    groups: tuple[Name, ...] = ()
    roles: tuple[Name, ...] = Field(min_length=1)
    targets: TargetSelector


class ApproversConfig(_Strict):
    """Who may review: user ids and/or groups."""

    users: tuple[Name, ...] = ()
    groups: tuple[Name, ...] = ()


class RuleConfig(_Strict):
    """One policy rule. The first rule whose ``when`` is true decides."""

    name: Name
    when: str = Field(default="true", min_length=1, max_length=4000, description="CEL")
    effect: Outcome
    approvals: int = Field(default=1, ge=1, le=10)
    approvers: ApproversConfig | None = None
    reason: str | None = Field(default=None, max_length=500)


class PolicyConfig(_Strict):
    """Ordered rules and the time zone for ``now.hour``/``now.weekday`` facts."""

    timezone: str = "UTC"
    rules: tuple[RuleConfig, ...] = ()
    tests: Annotated[str, Field(min_length=1, max_length=1000)] | None = Field(
        default=None,
        description="policy test cases (path relative to this file) that must pass before this "
        "configuration is loaded or reloaded",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _check_zone(value)


class RotationConfig(_Strict):
    """A simple rota: ``people`` take turns, each for one ``shift``, from ``start``.

    ``start`` is a wall-clock time in ``timezone`` (``2026-11-02T09:00``); hand-overs happen at
    the same wall-clock time every shift, across daylight-saving changes (a 1-day shift that
    starts at 09:00 always hands over at 09:00 local time).
    """

    start: datetime
    timezone: str = "UTC"
    shift: Duration = timedelta(days=7)
    people: tuple[Annotated[str, Field(min_length=1, max_length=254)], ...] = Field(
        min_length=1, description="user ids or e-mail addresses, in order"
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _check_zone(value)

    @field_validator("start")
    @classmethod
    def _naive(cls, value: datetime) -> datetime:
        if value.tzinfo is not None:
            raise ValueError("give start as a local wall-clock time; the zone is `timezone`")
        return value


class ScheduleConfig(_Strict):
    """An on-call schedule and the targets it covers.

    Exactly one source: ``ical`` (an RFC 5545 file path, relative to the configuration file, or
    an ``http(s)://`` URL, e.g. a PagerDuty or Opsgenie schedule export) or ``rotation``.
    """

    name: Name
    ical: Annotated[str, Field(min_length=1, max_length=2000)] | None = None
    rotation: RotationConfig | None = None
    targets: TargetSelector

    @model_validator(mode="after")
    def _one_source(self) -> ScheduleConfig:
        if (self.ical is None) == (self.rotation is None):
            raise ValueError("give exactly one of ical or rotation")
        if self.ical is not None and "://" in self.ical:
            scheme, rest = self.ical.split("://", 1)
            if scheme not in ("http", "https"):
                raise ValueError("ical URLs must be http:// or https://")
            if "@" in rest.split("/", 1)[0]:
                raise ValueError("credentials in the URL are refused")
        return self


class OnCallConfig(_Strict):
    """Where on-call schedules come from, and how stale they may get.

    Sources are re-read every ``refresh``. A source that cannot be read keeps its last good state
    for ``keep_last_good``; after that (or if it was never read) nobody counts as on call for it
    (fail closed).
    """

    refresh: Duration = timedelta(minutes=5)
    keep_last_good: Duration = timedelta(hours=1)
    timeout: Duration = timedelta(seconds=10)
    max_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    schedules: tuple[ScheduleConfig, ...] = ()

    @model_validator(mode="after")
    def _keep_covers_refresh(self) -> OnCallConfig:
        if self.keep_last_good < self.refresh:
            raise ValueError(
                "keep_last_good must be at least refresh, or a healthy source would count as "
                "failed between two refreshes"
            )
        return self


LabelRegex = Annotated[str, Field(min_length=1, max_length=500)]


class AlertMappingConfig(_Strict):
    """Alerts whose labels all match (each regular expression fully anchored) map to ``targets``."""

    match: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")], LabelRegex] = (
        Field(min_length=1)
    )
    targets: tuple[Name, ...] = Field(min_length=1)

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: dict[str, str]) -> dict[str, str]:
        for label, pattern in value.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"label {label}: invalid regular expression: {exc}") from exc
        return value


class BasicAuthConfig(_Strict):
    """HTTP basic credentials a sender uses; only the password's SHA-256 is stored."""

    username: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^:\s]+$")]
    password_sha256: Sha256Hex


class AlertsConfig(_Strict):
    """Alert webhooks (``/v1/webhooks/alertmanager``, ``/v1/webhooks/alerts``) and their mapping.

    Senders authenticate with a bearer token (``bearer_token_sha256``) or basic auth (``basic``),
    as Alertmanager's ``http_config`` sends them; with neither configured the webhooks are off.
    An alert maps to the target named by its ``target_label`` label, and to the targets of every
    mapping whose matchers all match.
    """

    bearer_token_sha256: Sha256Hex | None = None
    basic: BasicAuthConfig | None = None
    target_label: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")] | None = "target"
    mappings: tuple[AlertMappingConfig, ...] = ()
    max_alerts: int = Field(default=1000, ge=1, le=100_000, description="per webhook call")
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)


class AdminsConfig(_Strict):
    """Who may revoke any grant and see every request."""

    users: tuple[Name, ...] = ()
    groups: tuple[Name, ...] = ()


class StoreConfig(_Strict):
    """SQLAlchemy URL: ``sqlite:///keyturn.db`` (default) or ``postgresql+psycopg://…``."""

    url: str = "sqlite:///keyturn.db"

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql+psycopg://")):
            raise ValueError("expected a 'sqlite:///PATH' or 'postgresql+psycopg://…' URL")
        return value


class SshCaConfig(_Strict):
    """The Ed25519 user CA and its key revocation list (KRL)."""

    key_path: Path = Path("keyturn-ca/user_ca")
    krl_path: Path | None = Field(
        default=None, description="where the KRL file is written; default: next to the key"
    )
    clock_skew: Duration = Field(
        default=timedelta(seconds=30), description="valid_after is backdated by this much"
    )


class LdapUsersConfig(_Strict):
    """How a Keyturn user is found in the directory: ``(&(objectClass=OC)(ATTR=login))``.

    OpenLDAP: ``attribute: uid``; Active Directory: ``attribute: sAMAccountName`` and
    ``object_class: user``. The login is escaped per RFC 4515 before it enters the filter.
    """

    base: DistinguishedName
    attribute: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9-]{0,62}$")] = "uid"
    object_class: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9-]{0,62}$")] = "person"
    scope: Literal["one", "sub"] = "sub"


class LdapGroupConfig(_Strict):
    """A group Keyturn manages (the allowlist: roles may only name groups listed here).

    ``member_attribute`` is ``member`` for ``groupOfNames`` (and AD groups), ``uniqueMember`` for
    ``groupOfUniqueNames``. ``allow`` lists DNs that may be members without a grant (service and
    break-glass accounts). ``mode: report`` reports other members as standing privileges;
    ``enforce`` also removes them.
    """

    dn: DistinguishedName
    member_attribute: Literal["member", "uniqueMember"] = "member"
    mode: Literal["report", "enforce"] = "report"
    allow: tuple[DistinguishedName, ...] = ()


class LdapConfig(_Strict):
    """The directory (OpenLDAP or Active Directory) the ``ldap`` provider writes to.

    The bind password is never in this file: it is read from the environment variable named by
    ``bind_password_env`` or from the file ``bind_password_file`` (which must not be readable by
    group or others).
    """

    url: Annotated[str, Field(pattern=r"^ldaps?://[^/?#\s]+/?$")] = Field(
        description="ldap://host:port or ldaps://host:port (LDAPS for Active Directory)"
    )
    start_tls: bool = False
    ca_file: Path | None = None
    bind_dn: DistinguishedName
    bind_password_env: Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]{0,63}$")] | None = None
    bind_password_file: Path | None = None
    timeout: Duration = Field(
        default=timedelta(seconds=5), description="connect and per-operation timeout"
    )
    users: LdapUsersConfig
    groups: tuple[LdapGroupConfig, ...] = Field(min_length=1)

    def group(self, dn: str) -> LdapGroupConfig | None:
        """The allowlisted group with this DN (compared as normalised DNs), or None."""
        wanted = normalize_dn(dn)
        return next((g for g in self.groups if normalize_dn(g.dn) == wanted), None)


class SmtpConfig(_Strict):
    """E-mail notifications through an SMTP relay (RFC 5321), optionally with STARTTLS and login.

    The password comes from the environment variable ``password_env``, never this file.
    """

    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: int = Field(default=25, ge=1, le=65535)
    from_address: Annotated[str, Field(pattern=r"^[^@\s<>]+@[^@\s<>]+$", max_length=254)]
    starttls: bool = False
    username: Annotated[str, Field(min_length=1, max_length=254)] | None = None
    password_env: Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]{0,63}$")] | None = None
    timeout: Duration = timedelta(seconds=10)


class NotifierConfig(_Strict):
    """Where alerts go besides the log: a webhook that receives JSON ``POST``s.

    A token for the webhook comes from the environment variable ``webhook_token_env`` and is
    sent as ``Authorization: Bearer``; URLs must not carry secrets.
    """

    webhook_url: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2000)] | None = None
    webhook_token_env: Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]{0,63}$")] | None = None
    timeout: Duration = timedelta(seconds=5)
    smtp: SmtpConfig | None = None
    expiry_warning: Duration = Field(
        default=timedelta(minutes=10),
        description="how long before a grant ends its holder is told it is expiring",
    )

    @field_validator("webhook_url")
    @classmethod
    def _no_userinfo(cls, value: str | None) -> str | None:
        if value is not None and "@" in value.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError(
                "credentials in the URL are refused; use webhook_token_env for a bearer token"
            )
        return value


class ServerConfig(_Strict):
    """Where ``keyturn serve`` listens, and the expiry worker's timings."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    worker_max_sleep: Duration = timedelta(seconds=5)
    justification_max_length: int = Field(default=1000, ge=10, le=10000)
    pending_ttl: Duration = Field(
        default=timedelta(hours=1), description="unanswered requests expire after this"
    )
    stale_after: Duration = Field(
        default=timedelta(seconds=60),
        description="a provisioning/revoking row untouched this long is finished by reconciliation",
    )
    retry_initial: Duration = Field(
        default=timedelta(seconds=1), description="first wait before a failed revocation is retried"
    )
    retry_max: Duration = Field(
        default=timedelta(seconds=30), description="longest wait between revocation retries"
    )
    revoke_concurrency: int = Field(
        default=8, ge=1, le=64, description="grants the worker revokes at the same time"
    )
    reconcile_interval: Duration = Field(
        default=timedelta(minutes=5),
        description="how often the worker compares managed groups with grants",
    )
    schedule_horizon: Duration = Field(
        default=timedelta(days=7), description="how far ahead a scheduled start may be"
    )


class BreakGlassConfig(_Strict):
    """Break-glass settings shared by every role (see ``docs/break-glass.md``).

    ``security_contacts`` are user ids or e-mail addresses told of every break-glass use (next to
    the role's approvers). ``kit_path`` is where the offline kit's public description is written
    (public key, fingerprint, sealed secrets; never a share). ``directory_account`` names an
    emergency directory account whose password is sealed in the kit and replaced at every
    rotation (RFC 3062 password modify).
    """

    justification_min_length: int = Field(default=20, ge=1, le=1000)
    review_deadline: Duration = Field(
        default=timedelta(hours=72), description="when the post-incident review is due"
    )
    security_contacts: tuple[Annotated[str, Field(min_length=1, max_length=254)], ...] = ()
    kit_path: Path = Path("keyturn-ca/break-glass-kit.json")
    directory_account: DistinguishedName | None = None


class GatewayConfig(_Strict):
    """The recording SSH gateway (``keyturn gateway``; see ``docs/gateway.md``).

    Users connect with their Keyturn certificate and the target's name as the SSH user name;
    the gateway relays the session to the target with a certificate minted for it alone and
    records it (asciicast v2) under ``recordings_dir``. A session that cannot be recorded is
    refused.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=2200, ge=1, le=65535)
    instance: Name | None = Field(
        default=None,
        description="this gateway's name among several sharing a store (default host:port on "
        "this machine); after a crash it ends only its own sessions",
    )
    public_host: str | None = Field(
        default=None, max_length=253, description="the name users reach the gateway by"
    )
    host_key_path: Path = Path("keyturn-ca/gateway_host_key")
    recordings_dir: Path = Path("keyturn-recordings")
    upstream_certificate_lifetime: Duration = Field(
        default=timedelta(seconds=30),
        description="validity of the certificate minted for each upstream login",
    )
    upstream_timeout: Duration = Field(
        default=timedelta(seconds=10), description="connect and login timeout to a target"
    )
    max_channels_per_connection: int = Field(default=10, ge=1, le=1000)
    max_recording_bytes: int = Field(
        default=4 * 1024**3,
        ge=1024 * 1024,
        description="a session whose recording reaches this size is ended (recording_failed)",
    )
    max_connections: int = Field(default=200, ge=1, le=100_000)
    grant_check_interval: Duration = Field(
        default=timedelta(milliseconds=500),
        description="how often live sessions' grants are re-read from the store",
    )

    @property
    def instance_name(self) -> str:
        """``instance``, or this machine's host name with the port."""
        return self.instance or f"{socket.gethostname()}:{self.port}"[:128]

    @field_validator("grant_check_interval")
    @classmethod
    def _interval(cls, value: timedelta) -> timedelta:
        if not timedelta(milliseconds=50) <= value <= timedelta(seconds=1):
            raise ValueError("must be between 50 ms and 1 s (sessions end within 2 s)")
        return value

    @field_validator("upstream_certificate_lifetime")
    @classmethod
    def _lifetime(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=5) <= value <= timedelta(minutes=5):
            raise ValueError("must be between 5 s and 5 min")
        return value


class AlwaysOnConfig(_Strict):
    """What ``keyturn report always-on`` calls habitual elevation.

    Working hours are ``start`` to ``end`` on ``workdays`` (1=Mon … 7=Sun) in ``timezone``. A
    requester is listed for a role when their grants of it cover at least ``threshold`` of the
    working hours in the last ``window``.
    """

    timezone: str = "UTC"
    workdays: tuple[Annotated[int, Field(ge=1, le=7)], ...] = (1, 2, 3, 4, 5)
    start: time = time(9, 0)
    end: time = time(17, 0)
    window: Duration = timedelta(days=14)
    threshold: float = Field(default=0.5, gt=0, le=1)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _check_zone(value)

    @model_validator(mode="after")
    def _order(self) -> AlwaysOnConfig:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class ReportsConfig(_Strict):
    """Settings of the built-in reports."""

    always_on: AlwaysOnConfig = AlwaysOnConfig()


class KeyturnConfig(_Strict):
    """The whole configuration file (version 1)."""

    version: Literal[1] = 1
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    ssh_ca: SshCaConfig = SshCaConfig()
    ldap: LdapConfig | None = None
    notifier: NotifierConfig = NotifierConfig()
    admins: AdminsConfig = AdminsConfig()
    users: tuple[UserConfig, ...] = ()
    targets: tuple[TargetConfig, ...] = ()
    roles: tuple[RoleConfig, ...] = ()
    eligibility: tuple[EligibilityConfig, ...] = ()
    policy: PolicyConfig = PolicyConfig()
    oncall: OnCallConfig = OnCallConfig()
    alerts: AlertsConfig = AlertsConfig()
    reports: ReportsConfig = ReportsConfig()
    break_glass: BreakGlassConfig = BreakGlassConfig()
    gateway: GatewayConfig = GatewayConfig()

    def users_named(self, who: str) -> list[UserConfig]:
        """Users an on-call entry names: by exact id, or by e-mail ignoring case (``mailto:``
        prefix allowed). More than one result means the name is ambiguous."""
        value = who.strip()
        if value.lower().startswith("mailto:"):
            value = value[len("mailto:") :]
        if "@" in value:
            folded = value.casefold()
            return [u for u in self.users if u.email and u.email.casefold() == folded]
        return [u for u in self.users if u.id == value]

    def user(self, user_id: str) -> UserConfig | None:
        """The user with this exact id, or None."""
        return self._index().users.get(user_id)

    def role(self, name: str) -> RoleConfig | None:
        """The role with this exact name, or None."""
        return self._index().roles.get(name)

    def target(self, name: str) -> TargetConfig | None:
        """The target with this exact name, or None."""
        return self._index().targets.get(name)

    def _index(self) -> _Index:
        """Users, roles and targets by id/name, built once per model (they are looked up per
        request and per grant; a linear scan of 1,000 users showed in the profiles). Rebuilt
        when the lists are not the ones it was built from (``model_copy(update=…)`` copies
        the cache along with the fields)."""
        index: _Index | None = self.__dict__.get("_keyturn_index")
        if index is None or not index.built_from(self):
            index = _Index.of(self)
            self.__dict__["_keyturn_index"] = index  # a cache, not a field: not validated
        return index


@dataclass(frozen=True)
class _Index:
    sources: tuple[object, object, object]
    users: dict[str, UserConfig]
    roles: dict[str, RoleConfig]
    targets: dict[str, TargetConfig]

    @classmethod
    def of(cls, config: KeyturnConfig) -> _Index:
        users: dict[str, UserConfig] = {}
        roles: dict[str, RoleConfig] = {}
        targets: dict[str, TargetConfig] = {}
        for u in config.users:  # the first of a name wins, as the scan did
            users.setdefault(u.id, u)
        for r in config.roles:
            roles.setdefault(r.name, r)
        for t in config.targets:
            targets.setdefault(t.name, t)
        return cls((config.users, config.roles, config.targets), users, roles, targets)

    def built_from(self, config: KeyturnConfig) -> bool:
        users, roles, targets = self.sources
        return users is config.users and roles is config.roles and targets is config.targets


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration and the SHA-256 (hex) of the bytes it was read from."""

    config: KeyturnConfig
    sha256: str
    source: str

    @property
    def base_dir(self) -> Path:
        """The directory relative paths in the file (``ical``, ``policy.tests``) start from."""
        return Path(self.source).parent if self.source != "<memory>" else Path.cwd()

    def resolve(self, path: str) -> Path:
        """``path`` as given if absolute, else relative to :attr:`base_dir`."""
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.base_dir / candidate


def _loc(parts: tuple[int | str, ...]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_config(data: object, *, source: str = "<memory>", raw: bytes = b"") -> LoadedConfig:
    """Validate an already-parsed YAML document.

    Raises:
        ConfigError: with ``details['path']`` set to the first offending key path.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the file must hold a mapping of keys", path="(top level)")
    try:
        config = KeyturnConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = _loc(tuple(first["loc"]))
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(
            f"{source}: {path}: {first['msg']}{more}", path=path, errors=exc.error_count()
        ) from exc
    check_references(config)
    return LoadedConfig(config=config, sha256=hashlib.sha256(raw).hexdigest(), source=source)


def load_config(path: Path) -> LoadedConfig:
    """Read, parse and validate a YAML configuration file.

    Raises:
        ConfigError: unreadable file, YAML syntax error (with line), or invalid content.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", path="(file)") from exc
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}", path="(file)") from exc
    return parse_config(data, source=str(path), raw=raw)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the configuration file."""
    return KeyturnConfig.model_json_schema()


def _fail(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}", path=path)


def _unique(items: list[str], path: str, what: str) -> None:
    seen: dict[str, str] = {}
    for index, item in enumerate(items):
        folded = item.casefold()
        if folded in seen:
            raise _fail(
                f"{path}[{index}]",
                f"{what} {item!r} clashes with {seen[folded]!r} (names are compared ignoring case)",
            )
        seen[folded] = item


def check_principal_template(template: str, path: str) -> None:
    """Refuse principal templates that could render ``*``, empty or comma-containing principals.

    Fields are ``{role}``, ``{target}``, ``{user}``; their values match :data:`NAME_PATTERN`, so
    checking the literal text once with a safe placeholder value proves every rendering safe.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise _fail(path, f"principal template {template!r} is malformed") from exc
    for _literal, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        if field_name not in PRINCIPAL_FIELDS or spec or conversion:
            raise _fail(path, f"unknown field {{{field_name}}}; use {{role}}, {{target}}, {{user}}")
    sample = template.format(role="r", target="t", user="u")
    if not PRINCIPAL_PATTERN.match(sample):
        raise _fail(
            path,
            f"principal template {template!r} would produce an unsafe principal; "
            "allowed: letters, digits and . _ @ : + = - (no '*', ',', spaces or empty)",
        )


def check_references(config: KeyturnConfig) -> None:
    """Cross-checks pydantic cannot express: uniqueness, references, approver quorums."""
    _unique([u.id for u in config.users], "users", "user id")
    _unique([t.name for t in config.targets], "targets", "target")
    _unique([r.name for r in config.roles], "roles", "role")
    _unique([r.name for r in config.policy.rules], "policy.rules", "rule")
    user_ids = {u.id for u in config.users}
    groups = {g for u in config.users for g in u.groups}
    roles = {r.name for r in config.roles}
    targets = {t.name for t in config.targets}
    for i, role in enumerate(config.roles):
        for j, template in enumerate(role.ssh.principals):
            check_principal_template(template, f"roles[{i}].ssh.principals[{j}]")
        if role.default_duration > role.max_duration:
            raise _fail(f"roles[{i}].default_duration", "is longer than max_duration")
        if role.max_duration <= timedelta(0):
            raise _fail(f"roles[{i}].max_duration", "must be longer than zero")
        _check_role_provider(config, role, f"roles[{i}]")
        _check_break_glass_role(role, f"roles[{i}].break_glass", groups)
    if config.ldap is not None:
        _check_ldap(config.ldap)
    for i, rule in enumerate(config.eligibility):
        _known(rule.users, user_ids, f"eligibility[{i}].users", "user")
        _known(rule.roles, roles, f"eligibility[{i}].roles", "role")
        _known(rule.targets.names, targets, f"eligibility[{i}].targets.names", "target")
        if not rule.users and not rule.groups:
            raise _fail(f"eligibility[{i}]", "names no users and no groups")
        if not rule.targets.names and not rule.targets.labels:
            raise _fail(f"eligibility[{i}].targets", "selects no targets (give names or labels)")
    _known(config.admins.users, user_ids, "admins.users", "user")
    for i, policy_rule in enumerate(config.policy.rules):
        _check_rule_approvers(policy_rule, f"policy.rules[{i}]", config, user_ids, groups)
    _check_incident_sources(config, targets)
    _check_break_glass(config)


def _check_break_glass_role(role: RoleConfig, path: str, groups: set[str]) -> None:
    settings = role.break_glass
    if settings is None:
        return
    if settings.group not in groups:
        raise _fail(f"{path}.group", f"no user is in group {settings.group!r}")
    if settings.max_duration <= timedelta(0):
        raise _fail(f"{path}.max_duration", "must be longer than zero")
    if settings.max_duration > role.max_duration:
        raise _fail(f"{path}.max_duration", "is longer than the role's max_duration")


def _check_break_glass(config: KeyturnConfig) -> None:
    settings = config.break_glass
    if settings.review_deadline <= timedelta(0):
        raise _fail("break_glass.review_deadline", "must be longer than zero")
    for i, contact in enumerate(settings.security_contacts):
        if "@" not in contact and config.user(contact) is None:
            raise _fail(
                f"break_glass.security_contacts[{i}]", f"{contact!r} is no user id or e-mail"
            )
    if settings.directory_account is not None and config.ldap is None:
        raise _fail(
            "break_glass.directory_account", "a sealed directory account needs the 'ldap' section"
        )


def _check_incident_sources(config: KeyturnConfig, targets: set[str]) -> None:
    """On-call schedules and alert mappings name known targets and (rotations) users."""
    _unique([sc.name for sc in config.oncall.schedules], "oncall.schedules", "schedule")
    for i, schedule in enumerate(config.oncall.schedules):
        path = f"oncall.schedules[{i}]"
        _known(schedule.targets.names, targets, f"{path}.targets.names", "target")
        if not schedule.targets.names and not schedule.targets.labels:
            raise _fail(f"{path}.targets", "covers no targets (give names or labels)")
        if schedule.rotation is not None:
            for j, person in enumerate(schedule.rotation.people):
                if not config.users_named(person):
                    raise _fail(
                        f"{path}.rotation.people[{j}]", f"{person!r} is no user's id or e-mail"
                    )
    for i, mapping in enumerate(config.alerts.mappings):
        _known(mapping.targets, targets, f"alerts.mappings[{i}].targets", "target")


def _check_role_provider(config: KeyturnConfig, role: RoleConfig, path: str) -> None:
    if role.provider != "ldap":
        if role.ldap is not None:
            raise _fail(f"{path}.ldap", "only a role with provider: ldap has an ldap section")
        return
    if role.ldap is None:
        raise _fail(f"{path}.ldap", "a role with provider: ldap must name its group")
    if config.ldap is None:
        raise _fail(f"{path}.provider", "provider ldap needs a top-level 'ldap' section")
    if config.ldap.group(role.ldap.group) is None:
        raise _fail(
            f"{path}.ldap.group",
            f"group {role.ldap.group!r} is not on the allowlist ldap.groups; "
            "Keyturn only writes to groups listed there",
        )


def _check_ldap(ldap_config: LdapConfig) -> None:
    if (ldap_config.bind_password_env is None) == (ldap_config.bind_password_file is None):
        raise _fail("ldap", "give exactly one of bind_password_env or bind_password_file")
    if ldap_config.start_tls and ldap_config.url.startswith("ldaps://"):
        raise _fail("ldap.start_tls", "ldaps:// is already TLS; start_tls is for ldap://")
    _unique([normalize_dn(g.dn) for g in ldap_config.groups], "ldap.groups", "group DN")


def _known(names: tuple[str, ...], known: set[str], path: str, what: str) -> None:
    for index, name in enumerate(names):
        if name not in known:
            folded = {k.casefold(): k for k in known}
            hint = folded.get(name.casefold())
            extra = f"; did you mean {hint!r}? (names are exact)" if hint else ""
            raise _fail(f"{path}[{index}]", f"unknown {what} {name!r}{extra}")


def _check_rule_approvers(
    rule: RuleConfig, path: str, config: KeyturnConfig, user_ids: set[str], groups: set[str]
) -> None:
    if rule.effect is not Outcome.REQUIRE_APPROVAL:
        if rule.approvers is not None:
            raise _fail(f"{path}.approvers", "only a require_approval rule has approvers")
        return
    if rule.approvers is None or not (rule.approvers.users or rule.approvers.groups):
        raise _fail(f"{path}.approvers", "a require_approval rule must name approvers")
    _known(rule.approvers.users, user_ids, f"{path}.approvers.users", "user")
    _known(rule.approvers.groups, groups, f"{path}.approvers.groups", "group (no user is in it)")
    possible = {
        u.id
        for u in config.users
        if u.id in rule.approvers.users or set(u.groups) & set(rule.approvers.groups)
    }
    if len(possible) < rule.approvals:
        raise _fail(
            f"{path}.approvals",
            f"needs {rule.approvals} distinct approvers but only {len(possible)} can approve",
        )
