"""The offline break-glass kit: a CA key that never rests anywhere whole.

A random 256-bit master secret is split into SLIP-39 mnemonic shares (``shamir-mnemonic``, the
reference implementation of SatoshiLabs SLIP-0039: Shamir's secret sharing over GF(256), an
RS1024 checksum in every share, and a digest that detects a wrong combination). From the master
secret, HKDF-SHA256 (RFC 5869) derives:

* the break-glass SSH user CA key (Ed25519, RFC 8032), ``info = b"keyturn break-glass v1 ssh-ca"``;
* the sealing key for secrets kept in the kit (AES-256-GCM), ``info = b"keyturn break-glass v1
  seal"``, with the kit id and the secret's name as associated data.

The master secret and both keys exist only in memory while a kit is made or used; only the public
description (:class:`~keyturn.domain.break_glass.KitInfo`) is stored.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from datetime import datetime

import shamir_mnemonic
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from shamir_mnemonic.share import Share

from keyturn.domain.break_glass import KitInfo, ca_line, fingerprint, kit_id_for
from keyturn.domain.errors import InvalidInput

MASTER_BYTES = 32
MAX_SHARES = 16
"""SLIP-39 allows at most 16 members per group."""
SEALED_ACCOUNT = "directory_password"
"""The name under which the emergency directory account's password is sealed."""


def _derive(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


def ca_key(master: bytes) -> ed25519.Ed25519PrivateKey:
    """The break-glass CA key derived from the master secret."""
    return ed25519.Ed25519PrivateKey.from_private_bytes(
        _derive(master, b"keyturn break-glass v1 ssh-ca")
    )


def _aad(kit_id: str, name: str) -> bytes:
    return f"{kit_id}/{name}".encode()


def seal(master: bytes, kit_id: str, name: str, secret: str, *, dn: str) -> dict[str, str]:
    """Encrypt ``secret`` with the kit's sealing key; ``{dn, nonce, ciphertext}`` (base64)."""
    nonce = secrets.token_bytes(12)
    box = AESGCM(_derive(master, b"keyturn break-glass v1 seal"))
    sealed = box.encrypt(nonce, secret.encode(), _aad(kit_id, name))
    return {
        "dn": dn,
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(sealed).decode(),
    }


def unseal(master: bytes, kit: KitInfo, name: str) -> str:
    """Decrypt the secret ``name`` sealed in ``kit``.

    Raises:
        InvalidInput: the kit holds no such secret, or it does not decrypt with these shares.
    """
    entry = kit.sealed.get(name)
    if entry is None:
        raise InvalidInput(f"kit {kit.id} holds no sealed {name}", field="kit")
    box = AESGCM(_derive(master, b"keyturn break-glass v1 seal"))
    try:
        plain = box.decrypt(
            base64.b64decode(entry["nonce"]),
            base64.b64decode(entry["ciphertext"]),
            _aad(kit.id, name),
        )
    except (InvalidTag, KeyError, ValueError) as exc:
        raise InvalidInput(
            f"the sealed {name} does not open with these shares", field="kit"
        ) from exc
    return plain.decode()


def new_kit(
    *, threshold: int, shares: int, now: datetime, sealed: dict[str, tuple[str, str]] | None = None
) -> tuple[KitInfo, list[str]]:
    """Make a kit: a fresh master secret split into ``shares`` mnemonics, ``threshold`` of which
    rebuild it.

    Args:
        sealed: secrets to seal in the kit, by name: ``(dn, secret)``.

    Returns:
        The public description and the mnemonics (to print once; never store them).

    Raises:
        InvalidInput: ``threshold``/``shares`` out of range (1 ≤ threshold ≤ shares ≤ 16;
            a threshold of 1 with several shares is refused: each share would be the key).
    """
    if not 1 <= shares <= MAX_SHARES:
        raise InvalidInput(f"shares must be between 1 and {MAX_SHARES}", field="shares")
    if not 1 <= threshold <= shares:
        raise InvalidInput(
            "threshold must be between 1 and the number of shares", field="threshold"
        )
    if threshold == 1 and shares > 1:
        raise InvalidInput(
            "a threshold of 1 makes every share the whole key; use 2 or more", field="threshold"
        )
    master = secrets.token_bytes(MASTER_BYTES)
    groups = shamir_mnemonic.generate_mnemonics(
        group_threshold=1, groups=[(threshold, shares)], master_secret=master
    )
    mnemonics = groups[0]
    public = ca_key(master).public_key()
    kit_id = kit_id_for(public)
    kit = KitInfo(
        id=kit_id,
        created_at=now.replace(microsecond=0),  # as the kit file and every store keep it
        public_key=ca_line(public),
        fingerprint=fingerprint(public),
        identifier=Share.from_mnemonic(mnemonics[0]).identifier,
        threshold=threshold,
        shares=shares,
        sealed={
            name: seal(master, kit_id, name, secret, dn=dn)
            for name, (dn, secret) in (sealed or {}).items()
        },
    )
    return kit, mnemonics


def normalize_share(text: str) -> str:
    """A share as typed: words lower-cased, runs of blanks (and line breaks) made one space."""
    return " ".join(text.lower().split())


@dataclass
class ShareCollector:
    """Collects shares one at a time and rebuilds the master secret at the threshold.

    Each share is checked as it is given (its RS1024 checksum, its kit identifier, that it is
    new), so a mistyped word or a share of another kit is refused at once with a clear reason
    and never combined. Giving the same share twice counts once.

    Args:
        kit: the kit the shares must belong to (its identifier and fingerprint), when known.
    """

    kit: KitInfo | None = None
    _shares: dict[int, str] = field(default_factory=dict)
    _first: Share | None = None

    @property
    def threshold(self) -> int | None:
        """Shares needed (known from the kit, or from the first share)."""
        if self.kit is not None:
            return self.kit.threshold
        return self._first.member_threshold if self._first is not None else None

    @property
    def count(self) -> int:
        """Distinct valid shares given so far."""
        return len(self._shares)

    @property
    def complete(self) -> bool:
        """Enough shares to rebuild the key."""
        threshold = self.threshold
        return threshold is not None and self.count >= threshold

    def add(self, typed: str) -> str:
        """Check and keep one share; return what to tell the user.

        Raises:
            InvalidInput: the share is malformed or mistyped (checksum), belongs to another kit,
                or is of a kind Keyturn does not make (several groups).
        """
        text = normalize_share(typed)
        if not text:
            raise InvalidInput("that share is empty", field="share")
        try:
            share = Share.from_mnemonic(text)
        except shamir_mnemonic.MnemonicError as exc:
            raise InvalidInput(
                "that is not a valid share: a word is mistyped, missing or out of order "
                "(its checksum fails); nothing was kept",
                field="share",
            ) from exc
        if share.group_count != 1 or share.group_threshold != 1:
            raise InvalidInput(
                "that share is not from a Keyturn kit (several groups)", field="share"
            )
        expected = self.kit.identifier if self.kit is not None else None
        if expected is None and self._first is not None:
            expected = self._first.identifier
        if expected is not None and share.identifier != expected:
            raise InvalidInput("that share belongs to another kit; nothing was kept", field="share")
        if self._first is not None and share.member_threshold != self._first.member_threshold:
            raise InvalidInput("that share belongs to another kit; nothing was kept", field="share")
        if share.index in self._shares:
            return "that share was already given; it counts once"
        self._first = self._first or share
        self._shares[share.index] = text
        return f"share accepted ({self.count} of {self.threshold})"

    def master_secret(self) -> bytes:
        """Rebuild the master secret from the shares given.

        Raises:
            InvalidInput: fewer than the threshold, the combination does not verify (SLIP-39
                digest), or it rebuilds a key that is not the kit's.
        """
        if not self.complete:
            needed = self.threshold
            raise InvalidInput(
                f"only {self.count} of the {needed if needed is not None else 'needed'} shares "
                "were given; nothing was signed",
                field="share",
            )
        try:
            master: bytes = shamir_mnemonic.combine_mnemonics(list(self._shares.values()))
        except shamir_mnemonic.MnemonicError as exc:
            raise InvalidInput(
                "these shares do not rebuild a kit (they do not belong together); nothing was "
                "signed",
                field="share",
            ) from exc
        if self.kit is not None and kit_id_for(ca_key(master).public_key()) != self.kit.id:
            raise InvalidInput(
                f"these shares rebuild a key that is not kit {self.kit.id}'s; nothing was signed",
                field="share",
            )
        return master
