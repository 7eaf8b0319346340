"""Offline break-glass: sign a short SSH certificate and a record with the kit, with no server,
no database and no network (``keyturn break-glass offline``).

Inputs are the configuration file (roles, targets, caps: read, never a store), the user's public
key, and the shares typed one by one; the key is rebuilt in memory only
(:class:`keyturn.adapters.break_glass_kit.ShareCollector`). Everything is checked *before* any
share is asked for, so a bad request never needs the custodians.

The certificate's key id is ``break-glass:<record id>:<name given>``; its window is at most the
role's ``break_glass.max_duration``. The record (:mod:`keyturn.domain.break_glass`) says who,
what, why and when, with the certificate's serial, and is signed with the same key; ``keyturn
audit import`` verifies it when Keyturn is back.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from keyturn.adapters.break_glass_kit import ca_key
from keyturn.adapters.providers.ssh_ca import CertificateSpec, build_certificate, render_principals
from keyturn.config import NAME_PATTERN, KeyturnConfig, RoleConfig, TargetConfig
from keyturn.domain.break_glass import (
    RECORD_VERSION,
    KitInfo,
    fingerprint,
    format_record_time,
    kit_id_for,
    line_fingerprint,
    sign_record,
)
from keyturn.domain.errors import Forbidden, InvalidInput
from keyturn.domain.policy import is_eligible
from keyturn.domain.ssh_keys import parse_user_public_key
from keyturn.service.break_glass import break_glass_role, check_duration, check_justification
from keyturn.service.deps import random_id, random_serial

_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class OfflineAsk:
    """What the person breaking glass gives (untrusted until :func:`check_ask`)."""

    role: str
    target: str
    name: str
    justification: str
    ssh_public_key: str
    duration: timedelta | None = None


@dataclass(frozen=True)
class CheckedAsk:
    """An ask that passed every check: ready to sign once the shares rebuild the key."""

    role: RoleConfig
    target: TargetConfig
    name: str
    justification: str
    ssh_public_key: str
    duration: timedelta


@dataclass(frozen=True)
class OfflineResult:
    """What was signed: the certificate line, the record file's text and the facts to show."""

    record_id: str
    kit_id: str
    certificate: str
    record_text: str
    serial: int
    key_id: str
    principals: list[str]
    not_before: datetime
    not_after: datetime


def check_ask(config: KeyturnConfig, ask: OfflineAsk) -> CheckedAsk:
    """Check everything that does not need the key.

    Raises:
        InvalidInput: unknown role or target; no break-glass for the role; a role that grants no
            SSH access; a name that is not a plain name; a duration above the cap; a missing or
            short justification; a bad public key.
        Forbidden: the name is no user of the role's break-glass group, or that user is not
            eligible for the role on the target (break-glass skips review, not eligibility).
    """
    role, settings = break_glass_role(config, ask.role)
    if role.provider != "ssh":
        raise InvalidInput(
            f"role {role.name} is not an SSH role; offline break-glass signs SSH certificates "
            "(for the directory, use the sealed emergency account)",
            field="role",
        )
    target = config.target(ask.target)
    if target is None:
        raise InvalidInput(f"unknown target {ask.target!r}", field="target")
    name = ask.name.strip()
    if not _NAME.match(name):
        raise InvalidInput(
            "--name: your user id (letters, digits, '.', '_', '-'; at most 63)", field="name"
        )
    person = config.user(name)
    if person is None or settings.group not in person.groups:
        raise Forbidden(
            f"--name {name}: only members of group {settings.group} may break glass for role "
            f"{role.name}"
        )
    if not is_eligible(config, person, role.name, target):
        raise Forbidden(f"{name} is not eligible for role {role.name} on target {target.name}")
    duration = check_duration(role, settings, ask.duration)
    justification = check_justification(config, ask.justification)
    parse_user_public_key(ask.ssh_public_key)
    return CheckedAsk(
        role=role,
        target=target,
        name=name,
        justification=justification,
        ssh_public_key=ask.ssh_public_key.strip(),
        duration=duration,
    )


def sign(
    config: KeyturnConfig,
    ask: CheckedAsk,
    master: bytes,
    *,
    now: datetime,
    kit: KitInfo | None = None,
    host: str | None = None,
    sealed_opened: tuple[str, ...] = (),
) -> OfflineResult:
    """Sign the certificate and the record with the key rebuilt from ``master``.

    ``sealed_opened`` names the sealed secrets opened with these shares (the directory
    password): the record says so, and the import tells the reviewers.

    ``now`` comes from the clock adapter; the certificate is valid from ``now`` minus
    ``ssh_ca.clock_skew`` (targets whose clock is behind) until ``now + duration``.
    """
    key = ca_key(master)
    public = key.public_key()
    record_id = random_id("bg")
    serial = random_serial()
    key_id = f"break-glass:{record_id}:{ask.name}"
    principals = render_principals(
        ask.role.ssh.principals, role=ask.role.name, target=ask.target.name, user=ask.name
    )
    not_before = now - config.ssh_ca.clock_skew
    not_after = now + ask.duration
    user_key = parse_user_public_key(ask.ssh_public_key)
    spec = CertificateSpec(
        serial=serial,
        key_id=key_id,
        principals=principals,
        valid_after=not_before,
        valid_before=not_after,
        options=ask.role.ssh,
    )
    certificate = build_certificate(key, user_key, spec)
    record = {
        "version": RECORD_VERSION,
        "id": record_id,
        "kit_id": kit_id_for(public),
        "kit_fingerprint": fingerprint(public),
        "name": ask.name,
        "role": ask.role.name,
        "target": ask.target.name,
        "login": ask.target.login,
        "justification": ask.justification,
        "signed_at": format_record_time(now),
        "not_before": format_record_time(not_before),
        "not_after": format_record_time(not_after),
        "serial": str(serial),
        "key_id": key_id,
        "principals": principals,
        "user_key_fingerprint": line_fingerprint(ask.ssh_public_key),
        "host": (host if host is not None else socket.gethostname())[:253],
        "sealed_opened": list(sealed_opened),
    }
    return OfflineResult(
        record_id=record_id,
        kit_id=kit.id if kit is not None else kit_id_for(public),
        certificate=certificate,
        record_text=sign_record(key, record),
        serial=serial,
        key_id=key_id,
        principals=principals,
        not_before=not_before,
        not_after=not_after,
    )


__all__ = ["CheckedAsk", "OfflineAsk", "OfflineResult", "check_ask", "sign"]
