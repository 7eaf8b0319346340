"""Break-glass: post-incident reviews, the offline kit's public description, and the offline
record format (pure data and pure functions; no I/O, no clock reads, no randomness).

An *offline break-glass record* is what ``keyturn break-glass offline`` writes when the broker is
down: who (the name given), what (role, target, certificate serial and window), why
(justification), when, signed with the break-glass key. Its file is JSON::

    {"record": {...fields below...}, "signature": "<base64 Ed25519 signature>"}

The signature covers ``RECORD_CONTEXT`` followed by the RFC 8785 (JSON Canonicalization Scheme)
form of ``record``, so the JSON may be re-indented without breaking it while any change to a
value (one byte) does. Ed25519 is RFC 8032.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from keyturn.config import NAME_PATTERN
from keyturn.domain.errors import Conflict, InvalidInput

RECORD_CONTEXT = b"keyturn break-glass record v1\n"
"""Domain separation: a record signature can never be mistaken for an SSH signature."""
RECORD_VERSION = 1
RECORD_MAX_BYTES = 64 * 1024
RECORD_MAX_DEPTH = 8
"""A record file nests three levels (file → ``record`` → ``principals``); deeper is refused
before anything recurses over it (the JSON parser and RFC 8785 canonicalisation both do)."""
_NAME = re.compile(NAME_PATTERN)
_RECORD_ID = re.compile(r"^bg_[0-9a-f]{20}$")
_KIT_ID = re.compile(r"^kit_[0-9a-f]{16}$")


class ReviewStatus(enum.StrEnum):
    """State of a post-incident review."""

    OPEN = "open"
    CLOSED = "closed"


class ReviewVerdict(enum.StrEnum):
    """What the reviewer concluded about a break-glass use."""

    JUSTIFIED = "justified"
    UNJUSTIFIED = "unjustified"


class BreakGlassMode(enum.StrEnum):
    """Online: through the running broker. Offline: signed with the kit while it was down."""

    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True)
class PostIncidentReview:
    """The mandatory review of one break-glass use.

    Attributes:
        id: ``pir_…``.
        mode: online (``grant_id``/``request_id`` set) or offline (``record_id``/``kit_id`` set).
        user_id: who broke glass (offline: the name given, as signed in the record).
        reviewers: user ids who may close it besides admins (the role's approvers and the
            security contacts who are users); never ``user_id``.
        used_at: when access began (aware UTC); ``due_at``: when the review is due.
        overdue_alerted_at: when the overdue alert went out (None: not yet).
        imported_by: the admin who imported an offline record (never closes its review).
        findings: what an imported record did outside the configuration in force (window above
            the cap, other principals or login, a user outside the break-glass group, a retired
            kit, a sealed secret opened); empty when it kept to it.
    """

    id: str
    mode: BreakGlassMode
    user_id: str
    role: str
    target: str
    justification: str
    used_at: datetime
    opened_at: datetime
    due_at: datetime
    reviewers: tuple[str, ...] = ()
    grant_id: str | None = None
    request_id: str | None = None
    record_id: str | None = None
    kit_id: str | None = None
    status: ReviewStatus = ReviewStatus.OPEN
    verdict: ReviewVerdict | None = None
    comment: str | None = None
    closed_by: str | None = None
    closed_at: datetime | None = None
    overdue_alerted_at: datetime | None = None
    imported_by: str | None = None
    findings: tuple[str, ...] = ()

    def overdue(self, now: datetime) -> bool:
        """Open and past its due time."""
        return self.status is ReviewStatus.OPEN and now >= self.due_at

    def close(
        self, by: str, verdict: ReviewVerdict, comment: str, now: datetime
    ) -> PostIncidentReview:
        """The review closed by ``by``.

        Raises:
            Conflict: it is already closed.
        """
        if self.status is not ReviewStatus.OPEN:
            raise Conflict(f"post-incident review {self.id} is already closed", review_id=self.id)
        return dataclasses.replace(
            self,
            status=ReviewStatus.CLOSED,
            verdict=verdict,
            comment=comment,
            closed_by=by,
            closed_at=now,
        )


@dataclass(frozen=True)
class KitInfo:
    """The public description of an offline break-glass kit (no share, no private key).

    Attributes:
        id: ``kit_`` + 16 hex digits of SHA-256 over the raw public key.
        public_key: the CA line for ``TrustedUserCAKeys``
            (``ssh-ed25519 AAAA… keyturn-break-glass:<id>``).
        fingerprint: ``SHA256:…`` as ``ssh-keygen -l`` prints it.
        identifier: the SLIP-39 identifier every share of the kit carries.
        threshold, shares: any ``threshold`` of ``shares`` rebuild the key.
        sealed: secrets sealed with the kit (``directory_password``: ``{dn, nonce, ciphertext}``
            as base64), decrypted only by rebuilding the key.
        spent_at, spent_by: when a use of the kit was imported, and the record's id.
        retired_at: when ``kit rotate`` replaced it (its CA line is no longer served).
    """

    id: str
    created_at: datetime
    public_key: str
    fingerprint: str
    identifier: int
    threshold: int
    shares: int
    sealed: dict[str, dict[str, str]] = field(default_factory=dict)
    spent_at: datetime | None = None
    spent_by: str | None = None
    retired_at: datetime | None = None

    @property
    def state(self) -> str:
        """``ready``, ``spent`` (used; rotate it) or ``retired``."""
        if self.retired_at is not None:
            return "retired"
        return "spent" if self.spent_at is not None else "ready"

    def public_data(self) -> dict[str, Any]:
        """The kit file's content (JSON-safe)."""
        return {
            "version": 1,
            "kit_id": self.id,
            "created_at": _time(self.created_at),
            "public_key": self.public_key,
            "fingerprint": self.fingerprint,
            "identifier": self.identifier,
            "threshold": self.threshold,
            "shares": self.shares,
            "sealed": self.sealed,
        }


def kit_from_public_data(data: object) -> KitInfo:
    """Inverse of :meth:`KitInfo.public_data` (a kit file).

    Raises:
        InvalidInput: not a kit description.
    """
    if not isinstance(data, dict) or data.get("version") != 1:
        raise InvalidInput("not a Keyturn break-glass kit file (version 1)", field="kit")
    try:
        kit = KitInfo(
            id=str(data["kit_id"]),
            created_at=parse_time(str(data["created_at"]), "created_at"),
            public_key=str(data["public_key"]),
            fingerprint=str(data["fingerprint"]),
            identifier=int(data["identifier"]),
            threshold=int(data["threshold"]),
            shares=int(data["shares"]),
            sealed=dict(data.get("sealed") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"the kit file lacks or garbles {exc}", field="kit") from exc
    if not _KIT_ID.match(kit.id):
        raise InvalidInput("the kit file's kit_id is malformed", field="kit")
    return kit


def kit_id_for(public_key: ed25519.Ed25519PublicKey) -> str:
    """``kit_`` + the first 16 hex digits of SHA-256 over the raw 32-byte public key."""
    return "kit_" + hashlib.sha256(public_key.public_bytes_raw()).hexdigest()[:16]


def fingerprint(public_key: ed25519.Ed25519PublicKey) -> str:
    """``SHA256:<unpadded base64>`` of the key blob (RFC 4253 §6.6), as ``ssh-keygen -l``."""
    line = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return line_fingerprint(line.decode())


def line_fingerprint(line: str) -> str:
    """``SHA256:…`` of an OpenSSH public key line (``type base64 [comment]``), as
    ``ssh-keygen -l`` shows it."""
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def ca_line(public_key: ed25519.Ed25519PublicKey) -> str:
    """The break-glass CA line for ``TrustedUserCAKeys``; the comment names the kit."""
    blob = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return f"{blob} keyturn-break-glass:{kit_id_for(public_key)}"


def public_key_of(kit: KitInfo) -> ed25519.Ed25519PublicKey:
    """The kit's Ed25519 public key, from its CA line.

    Raises:
        InvalidInput: the line is not an Ed25519 public key.
    """
    try:
        key = serialization.load_ssh_public_key(" ".join(kit.public_key.split()[:2]).encode())
    except (ValueError, IndexError) as exc:
        raise InvalidInput(f"kit {kit.id}: its public key does not parse", field="kit") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise InvalidInput(f"kit {kit.id}: its public key is not Ed25519", field="kit")
    return key


# --- offline records ------------------------------------------------------------------------
@dataclass(frozen=True)
class OfflineRecord:
    """A verified offline break-glass record (see the module docstring for the file format).

    Attributes:
        data: the signed fields as they are in the file (hashed into the audit chain as is).
        sha256: hex SHA-256 of the signed bytes (context + canonical record).
    """

    id: str
    kit_id: str
    name: str
    role: str
    target: str
    justification: str
    signed_at: datetime
    not_before: datetime
    not_after: datetime
    serial: str
    login: str
    principals: tuple[str, ...]
    sealed_opened: tuple[str, ...]
    data: dict[str, Any]
    signature: str
    sha256: str


RECORD_FIELDS = (
    "version",
    "id",
    "kit_id",
    "kit_fingerprint",
    "name",
    "role",
    "target",
    "login",
    "justification",
    "signed_at",
    "not_before",
    "not_after",
    "serial",
    "key_id",
    "principals",
    "user_key_fingerprint",
    "host",
    "sealed_opened",
)


def signed_bytes(record: dict[str, Any]) -> bytes:
    """What the signature covers: :data:`RECORD_CONTEXT` + RFC 8785 canonical JSON."""
    return RECORD_CONTEXT + rfc8785.dumps(record)


def sign_record(key: ed25519.Ed25519PrivateKey, record: dict[str, Any]) -> str:
    """The record file's text: ``{"record": …, "signature": …}`` (indented JSON + newline)."""
    signature = base64.b64encode(key.sign(signed_bytes(record))).decode()
    return json.dumps({"record": record, "signature": signature}, indent=2) + "\n"


def read_record(raw: bytes) -> tuple[dict[str, Any], str]:
    """Parse a record file into ``(record, signature)`` without trusting it yet.

    Raises:
        InvalidInput: too large, not JSON, or not shaped like a record.
    """
    if len(raw) > RECORD_MAX_BYTES:
        raise InvalidInput(f"the record is over {RECORD_MAX_BYTES} bytes", field="record")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput("the record is not JSON", field="record") from exc
    except RecursionError as exc:  # e.g. 60 000 '[' fit in the size limit
        raise InvalidInput("the record is nested too deeply", field="record") from exc
    if _nested_deeper(document, RECORD_MAX_DEPTH):
        raise InvalidInput("the record is nested too deeply", field="record")
    if not isinstance(document, dict) or set(document) != {"record", "signature"}:
        raise InvalidInput(
            "a break-glass record has exactly the keys 'record' and 'signature'", field="record"
        )
    record, signature = document["record"], document["signature"]
    if not isinstance(record, dict) or not isinstance(signature, str):
        raise InvalidInput("the record's shape is wrong", field="record")
    return record, signature


def _nested_deeper(value: object, limit: int) -> bool:
    """True if ``value`` nests lists/objects more than ``limit`` levels (iteratively)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            members = list(item.values())
        elif isinstance(item, list):
            members = item
        else:
            continue
        for child in members:
            if isinstance(child, dict | list):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def kit_of(record: dict[str, Any]) -> str:
    """The kit id a record names (to find the key that must verify it).

    Raises:
        InvalidInput: missing or malformed.
    """
    kit_id = record.get("kit_id")
    if not isinstance(kit_id, str) or not _KIT_ID.match(kit_id):
        raise InvalidInput("the record names no valid kit_id", field="record")
    return kit_id


def verify_record(
    record: dict[str, Any], signature: str, public_key: ed25519.Ed25519PublicKey
) -> OfflineRecord:
    """Check the signature, then the fields, and return the record.

    Raises:
        InvalidInput: the signature does not verify with ``public_key`` (the record was changed
            or signed by another kit), or a field is missing or malformed.
    """
    try:
        raw_signature = base64.b64decode(signature, validate=True)
        public_key.verify(raw_signature, signed_bytes(record))
    except (binascii.Error, InvalidSignature, ValueError, TypeError) as exc:
        raise InvalidInput(
            "the record's signature does not verify with its kit's key: it was changed after "
            "signing, or not signed by that kit",
            field="signature",
        ) from exc
    if set(record) != set(RECORD_FIELDS) or record.get("version") != RECORD_VERSION:
        raise InvalidInput("the record's fields are not those of version 1", field="record")
    lists = ("principals", "sealed_opened")
    for name in lists:
        value = record[name]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidInput(f"the record's {name} is not a list of text", field="record")
    texts = {k: record[k] for k in RECORD_FIELDS if k != "version" and k not in lists}
    if not all(isinstance(v, str) for v in texts.values()):
        raise InvalidInput("the record's fields must be text", field="record")
    if not _RECORD_ID.match(record["id"]):
        raise InvalidInput("the record id is malformed", field="record")
    for name in ("name", "role", "target"):
        if not _NAME.match(record[name]):
            raise InvalidInput(f"the record's {name} is not a valid name", field="record")
    if not record["serial"].isdigit():
        raise InvalidInput("the record's serial is not a number", field="record")
    signed_at = parse_time(record["signed_at"], "signed_at")
    not_before = parse_time(record["not_before"], "not_before")
    not_after = parse_time(record["not_after"], "not_after")
    if not not_before <= signed_at < not_after:
        raise InvalidInput("the record's times are inconsistent", field="record")
    return OfflineRecord(
        id=record["id"],
        kit_id=kit_of(record),
        name=record["name"],
        role=record["role"],
        target=record["target"],
        justification=record["justification"],
        signed_at=signed_at,
        not_before=not_before,
        not_after=not_after,
        serial=record["serial"],
        login=record["login"],
        principals=tuple(record["principals"]),
        sealed_opened=tuple(record["sealed_opened"]),
        data=record,
        signature=signature,
        sha256=hashlib.sha256(signed_bytes(record)).hexdigest(),
    )


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_record_time(value: datetime) -> str:
    """Times in records and kit files: RFC 3339 UTC to the second (``…Z``)."""
    return _time(value)


def parse_time(value: str, what: str) -> datetime:
    """An RFC 3339 time with an offset, as aware UTC.

    Raises:
        InvalidInput: not such a time.
    """
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(f"{what} is not an RFC 3339 time", field=what) from exc
    if parsed.tzinfo is None:
        raise InvalidInput(f"{what} has no UTC offset", field=what)
    return parsed.astimezone(UTC)
