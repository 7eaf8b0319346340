"""Alert facts' input side: webhook bodies → :class:`AlertState`, labels → targets, sender auth.

Pure: no I/O and no clock reads (``now`` is an argument). The HTTP routes read the body (at most
``alerts.max_body_bytes``), call :func:`check_webhook_auth`, then :func:`parse_alertmanager` or
:func:`parse_generic`, and store the states; :class:`AlertTargets` says which targets an alert
is about, and :func:`is_firing` whether it counts at a given time.

``POST /v1/webhooks/alertmanager`` takes Prometheus Alertmanager's webhook payload, version
``"4"`` (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config). Firing
alerts carry Go's zero time ``0001-01-01T00:00:00Z`` as ``endsAt``; it is read as "no end".

``POST /v1/webhooks/alerts`` takes this generic shape from any other tool (UTF-8 JSON)::

    {
      "alerts": [                          # 0 … alerts.max_alerts items
        {
          "id": "chk-4711",                # optional, ≤ 128 chars: the sender's stable id;
                                           #   default: SHA-256 of the source and the sorted
                                           #   labels (alertname and severity included)
          "name": "DiskFull",              # required: becomes the label "alertname"
          "status": "firing",              # required: "firing" | "resolved"
          "severity": "critical",          # optional: becomes the label "severity"
          "labels": {"instance": "db-1"},  # optional: ≤ 64 labels, names ≤ 128 chars,
                                           #   values ≤ 1024 chars, no control characters
          "target": "db-1",                # optional: the same as the target label
          "starts_at": "2026-11-17T02:45:03Z",  # optional RFC 3339; default: time received
                                                #   (ends_at if that is earlier)
          "ends_at": "2026-11-17T03:12:41Z",    # optional RFC 3339; in the past = resolved
          "summary": "Disk /var is 98% full"    # optional: kept to 500 characters
        }
      ]
    }

Unknown keys in the generic shape are errors (a misspelt ``lables`` must not pass silently);
unknown keys in Alertmanager's payload are ignored (newer Alertmanager versions add fields). A
field given twice (``name`` and ``labels.alertname``) must agree. Every error is
:class:`~keyturn.domain.errors.InvalidInput` and nothing of that body is accepted.

Timestamps are RFC 3339 (``2026-11-17T02:45:03Z``, ``…03.5+01:00``), returned as aware UTC.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from keyturn.config import AlertsConfig, TargetConfig
from keyturn.domain.errors import InvalidInput, TooLarge, Unauthenticated
from keyturn.domain.text import escape_controls

MAX_LABELS = 64
MAX_LABEL_NAME = 128  # characters
MAX_LABEL_VALUE = 1024  # characters
MAX_ID = 128  # characters: an Alertmanager fingerprint or a generic sender's id
MAX_SUMMARY = 500  # characters kept of annotations.summary / summary
MAX_AUTHORIZATION = 4096  # characters of an Authorization header considered at all
ALERTMANAGER_VERSION = "4"
UNNAMED = "unnamed"
"""The name of an Alertmanager alert without an ``alertname`` label."""

_GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?P<fraction>\.\d{1,9})?(?P<zone>[Zz]|[+-]\d{2}:\d{2})"
)
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True)
class AlertState:
    """One alert as last reported by a sender.

    Attributes:
        fingerprint: Alertmanager's ``fingerprint``; for the generic webhook ``generic:`` and
            the sender's ``id`` or the SHA-256 (hex) of the source and the sorted labels (the
            prefix keeps the two sources' keys apart in the store).
        source: ``"alertmanager"`` or ``"generic"``.
        name: the ``alertname`` label (generic: ``name``).
        severity: the ``severity`` label, if any.
        status: as the sender reported it; see :func:`is_firing` for what counts.
        labels: all labels (generic: including ``alertname``, ``severity`` and the target label).
        starts_at: aware UTC.
        ends_at: aware UTC, or None when the sender gave no end (Go's zero time).
        summary: ``annotations.summary`` (generic: ``summary``), cut to 500 characters, control
            characters escaped (:func:`keyturn.domain.text.escape_controls`).
    """

    fingerprint: str
    source: Literal["alertmanager", "generic"]
    name: str
    severity: str | None
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None
    summary: str | None


def is_firing(alert: AlertState, now: datetime) -> bool:
    """True when ``alert`` is firing at ``now`` (aware): status firing and no end, or a later one.

    An alert whose ``ends_at`` has passed counts as resolved even if no resolved notification
    came (Alertmanager's own rule: an alert is resolved once ``endsAt`` is in the past).
    """
    return alert.status == "firing" and (alert.ends_at is None or alert.ends_at > now)


def _has_controls(text: str) -> bool:
    return any(unicodedata.category(ch) in _CONTROL_CATEGORIES for ch in text)


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{len(labels)} labels; at most {MAX_LABELS} are accepted")
    for name, value in labels.items():
        if not name or len(name) > MAX_LABEL_NAME or _has_controls(name):
            raise ValueError(
                f"label names must be 1-{MAX_LABEL_NAME} characters without control characters"
            )
        if len(value) > MAX_LABEL_VALUE or _has_controls(value):
            raise ValueError(
                f"label {_safe(name)}: values must be at most {MAX_LABEL_VALUE} characters "
                "without control characters"
            )
    return labels


def _check_word(value: str) -> str:
    if _has_controls(value):
        raise ValueError("must not contain control characters")
    return value


def _rfc3339(value: object) -> datetime:
    if not isinstance(value, str) or (found := _RFC3339.fullmatch(value)) is None:
        raise ValueError("expected an RFC 3339 timestamp such as 2026-11-17T02:45:03Z")
    fraction = found["fraction"] or ""
    zone = "+00:00" if found["zone"] in ("Z", "z") else found["zone"]
    text = value[:19].replace("t", "T") + fraction[:7] + zone
    try:
        parsed = datetime.fromisoformat(text)
        return _GO_ZERO_TIME if parsed == _GO_ZERO_TIME else parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError("not a valid date and time (RFC 3339)") from exc


Labels = Annotated[dict[str, str], AfterValidator(_check_labels)]
Timestamp = Annotated[datetime, BeforeValidator(_rfc3339)]
Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID), AfterValidator(_check_word)]
LabelValue = Annotated[
    str, Field(min_length=1, max_length=MAX_LABEL_VALUE), AfterValidator(_check_word)
]


class _AlertmanagerAlert(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    status: Literal["firing", "resolved"]
    labels: Labels
    annotations: dict[str, str]
    starts_at: Timestamp = Field(alias="startsAt")
    ends_at: Timestamp = Field(alias="endsAt")
    generator_url: str = Field(alias="generatorURL")
    fingerprint: Identifier


class _AlertmanagerWebhook(BaseModel):
    """Alertmanager's webhook payload, version 4 (the keys its documentation lists)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    version: Literal["4"]
    group_key: str = Field(alias="groupKey")
    truncated_alerts: int = Field(default=0, ge=0, alias="truncatedAlerts")
    status: Literal["firing", "resolved"]
    receiver: str
    group_labels: dict[str, str] = Field(alias="groupLabels")
    common_labels: dict[str, str] = Field(alias="commonLabels")
    common_annotations: dict[str, str] = Field(alias="commonAnnotations")
    external_url: str = Field(alias="externalURL")
    alerts: list[_AlertmanagerAlert]


class _GenericAlert(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    id: Identifier | None = None
    name: LabelValue
    status: Literal["firing", "resolved"]
    severity: LabelValue | None = None
    labels: Labels = {}
    target: LabelValue | None = None
    starts_at: Timestamp | None = None
    ends_at: Timestamp | None = None
    summary: str | None = None


class _GenericWebhook(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    alerts: list[_GenericAlert]


def parse_alertmanager(body: bytes, *, max_alerts: int) -> list[AlertState]:
    """Read an Alertmanager webhook body (JSON, payload version ``"4"``).

    Args:
        body: the raw request body (UTF-8 JSON).
        max_alerts: the most alerts accepted in one body (``alerts.max_alerts``).

    Returns:
        One :class:`AlertState` per alert, in the payload's order (source ``"alertmanager"``).

    Raises:
        TooLarge: more than ``max_alerts`` alerts (an :class:`InvalidInput`; checked before
            the alerts are validated).
        InvalidInput: not UTF-8 JSON, duplicate keys, a version other than ``"4"``, a missing or
            ill-typed key, labels out of bounds, or a fingerprint given twice.
            ``details['errors']`` lists ``{path, message}`` items of schema errors.
    """
    data = _load_json(body)
    if isinstance(data, dict) and "version" in data and data["version"] != ALERTMANAGER_VERSION:
        raise InvalidInput(
            f"Alertmanager webhook payload version {_safe(repr(data['version']))} is not "
            f"supported; Keyturn reads version {ALERTMANAGER_VERSION!r}",
            field="version",
        )
    _check_count(data, max_alerts)
    payload = _validated(_AlertmanagerWebhook, data, "Alertmanager webhook")
    states = [
        AlertState(
            fingerprint=alert.fingerprint,
            source="alertmanager",
            name=alert.labels.get("alertname") or UNNAMED,
            severity=alert.labels.get("severity"),
            status=alert.status,
            labels=dict(alert.labels),
            starts_at=alert.starts_at,
            ends_at=None if alert.ends_at == _GO_ZERO_TIME else alert.ends_at,
            summary=_summary(alert.annotations.get("summary")),
        )
        for alert in payload.alerts
    ]
    return _unique_fingerprints(states)


def parse_generic(
    body: bytes, *, max_alerts: int, now: datetime, target_label: str | None = "target"
) -> list[AlertState]:
    """Read a generic alert webhook body (the shape in this module's docstring).

    Args:
        body: the raw request body (UTF-8 JSON).
        max_alerts: the most alerts accepted in one body (``alerts.max_alerts``).
        now: aware time of receipt, the ``starts_at`` of alerts that give none (their
            ``ends_at`` instead when that is earlier).
        target_label: the label a ``target`` field is stored as (``alerts.target_label``;
            ``"target"`` when that is None).

    Returns:
        One :class:`AlertState` per alert, in order (source ``"generic"``).

    Raises:
        InvalidInput: as :func:`parse_alertmanager`, plus unknown keys, ``ends_at`` before
            ``starts_at``, and ``name`` / ``severity`` / ``target`` disagreeing with the labels.
        ValueError: ``now`` is naive (a programming error, not the sender's).
    """
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    data = _load_json(body)
    _check_count(data, max_alerts)
    payload = _validated(_GenericWebhook, data, "alert webhook")
    states = [
        _generic_state(alert, f"alerts[{i}]", now.astimezone(UTC), target_label or "target")
        for i, alert in enumerate(payload.alerts)
    ]
    return _unique_fingerprints(states)


def _generic_state(alert: _GenericAlert, path: str, now: datetime, target_label: str) -> AlertState:
    labels = dict(alert.labels)
    for key, value in (("alertname", alert.name), ("severity", alert.severity)):
        _merge_label(labels, key, value, path)
    _merge_label(labels, target_label, alert.target, path)
    try:
        _check_labels(labels)
    except ValueError as exc:
        raise InvalidInput(f"invalid alert webhook: {path}.labels: {exc}", field=path) from exc
    starts_at = alert.starts_at or min(now, alert.ends_at or now)
    if alert.ends_at is not None and alert.ends_at < starts_at:
        raise InvalidInput(f"invalid alert webhook: {path}: ends_at is before starts_at")
    canonical = json.dumps(["generic", sorted(labels.items())], separators=(",", ":"))
    return AlertState(
        fingerprint="generic:" + (alert.id or hashlib.sha256(canonical.encode()).hexdigest()),
        source="generic",
        name=alert.name,
        severity=labels.get("severity"),
        status=alert.status,
        labels=labels,
        starts_at=starts_at,
        ends_at=alert.ends_at,
        summary=_summary(alert.summary),
    )


def _merge_label(labels: dict[str, str], key: str, value: str | None, path: str) -> None:
    if value is None:
        return
    if labels.setdefault(key, value) != value:
        raise InvalidInput(
            f"invalid alert webhook: {path}: labels.{_safe(key)} disagrees with the "
            "field of the same meaning",
            field=path,
        )


def _summary(text: str | None) -> str | None:
    return escape_controls(text[:MAX_SUMMARY]) if text else None


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a key appears twice in one JSON object")
    return result


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _load_json(body: bytes) -> object:
    try:
        return json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except UnicodeDecodeError as exc:
        raise InvalidInput("the webhook body is not UTF-8 text") from exc
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"the webhook body is not valid JSON: {_safe(str(exc))}") from exc


def _check_count(data: object, max_alerts: int) -> None:
    alerts = data.get("alerts") if isinstance(data, dict) else None
    if isinstance(alerts, list) and len(alerts) > max_alerts:
        raise TooLarge(
            f"{len(alerts)} alerts in one webhook; the limit is {max_alerts} (alerts.max_alerts)",
            count=len(alerts),
            limit=max_alerts,
        )


def _validated(model: type[_M], data: object, what: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"path": _error_path(error["loc"]), "message": _safe(error["msg"], 300)}
            for error in exc.errors(include_url=False, include_input=False)
        ]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        first = errors[0]
        raise InvalidInput(
            f"invalid {what}: {first['path'] or 'body'}: {first['message']}{more}",
            errors=errors[:10],
        ) from exc


def _error_path(loc: tuple[int | str, ...]) -> str:
    parts = [f"[{part}]" if isinstance(part, int) else f".{_safe(part)}" for part in loc]
    return "".join(parts).lstrip(".")


def _unique_fingerprints(states: list[AlertState]) -> list[AlertState]:
    seen: dict[str, int] = {}
    for i, state in enumerate(states):
        if (first := seen.setdefault(state.fingerprint, i)) != i:
            raise InvalidInput(
                f"alerts[{i}] repeats alerts[{first}] (same id, fingerprint or labels)",
                field=f"alerts[{i}]",
            )
    return states


def _safe(text: str, limit: int = 64) -> str:
    """Text from a sender made fit for an error message: control characters escaped, cut."""
    cut = text if len(text) <= limit else text[:limit] + "…"
    return escape_controls(cut)


class AlertTargets:
    """Which configured targets an alert's labels name.

    An alert is about the target named exactly by its ``alerts.target_label`` label (when that
    is configured and names a configured target), and about the targets of every
    ``alerts.mappings`` item whose ``match`` labels are all present and whose values each match
    the pattern in full (``re.fullmatch``: ``db-1(:\\d+)?`` matches ``db-1:5432``, never
    ``db-1|.*`` or ``x-db-1``). Only configured targets are returned.

    Args:
        alerts_config: the ``alerts`` section (patterns are compiled once, here).
        targets: the configured targets.
    """

    def __init__(self, alerts_config: AlertsConfig, targets: Sequence[TargetConfig]) -> None:
        self._names = frozenset(target.name for target in targets)
        self._target_label = alerts_config.target_label
        self._mappings = tuple(
            (
                tuple((label, re.compile(pattern)) for label, pattern in mapping.match.items()),
                tuple(name for name in mapping.targets if name in self._names),
            )
            for mapping in alerts_config.mappings
        )

    def targets_of(self, labels: dict[str, str]) -> tuple[str, ...]:
        """The target names ``labels`` map to: sorted, unique, possibly empty."""
        found: set[str] = set()
        named = labels.get(self._target_label) if self._target_label else None
        if named in self._names:
            found.add(named)
        for matchers, mapped in self._mappings:
            if all(
                label in labels and pattern.fullmatch(labels[label]) for label, pattern in matchers
            ):
                found.update(mapped)
        return tuple(sorted(found))


def check_webhook_auth(config: AlertsConfig, authorization: str | None) -> None:
    """Check the ``Authorization`` header of an alert webhook call.

    Accepted: ``Bearer <token>`` (RFC 6750 §2.1) when SHA-256(token) is
    ``alerts.bearer_token_sha256``, and ``Basic <base64(user:password)>`` (RFC 7617, UTF-8)
    when the user is ``alerts.basic.username`` and SHA-256(password) is
    ``alerts.basic.password_sha256`` -- what Alertmanager's ``http_config`` sends with
    ``authorization: {credentials: …}`` or ``basic_auth``. Scheme names are case-insensitive
    (RFC 9110 §11.1). Comparisons are constant-time (``hmac.compare_digest``).

    Raises:
        Unauthenticated: no header, another scheme, wrong credentials, or no credentials
            configured (webhooks off). The message never contains the presented credentials;
            ``details['schemes']`` lists the accepted schemes for ``WWW-Authenticate``.
    """
    schemes = [
        name for name, on in (("Bearer", config.bearer_token_sha256), ("Basic", config.basic)) if on
    ]
    if not schemes:
        raise Unauthenticated(
            "alert webhooks are off: set alerts.bearer_token_sha256 or alerts.basic "
            "(username and password_sha256) in the configuration",
            schemes=[],
        )
    if authorization and len(authorization) <= MAX_AUTHORIZATION:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and _bearer_ok(config, credentials.strip()):
            return
        if scheme.lower() == "basic" and _basic_ok(config, credentials.strip()):
            return
    expected = " or ".join(schemes)
    problem = "missing" if not authorization else "wrong"
    raise Unauthenticated(
        f"alert webhook credentials are {problem}; expected {expected} authorization",
        schemes=schemes,
    )


def _sha256_matches(secret: bytes, expected_hex: str) -> bool:
    return hmac.compare_digest(hashlib.sha256(secret).hexdigest(), expected_hex)


def _bearer_ok(config: AlertsConfig, token: str) -> bool:
    if config.bearer_token_sha256 is None or not token:
        return False
    return _sha256_matches(token.encode(), config.bearer_token_sha256)


def _basic_ok(config: AlertsConfig, encoded: str) -> bool:
    if config.basic is None:
        return False
    try:
        user, colon, password = base64.b64decode(encoded, validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return False
    user_ok = hmac.compare_digest(user, config.basic.username.encode())
    password_ok = _sha256_matches(password, config.basic.password_sha256)
    return bool(colon) and user_ok and password_ok
