"""Users' SSH public keys: what Keyturn accepts to sign (pure; no I/O).

Format: the OpenSSH public key line (RFC 4253 §6.6 key blob, base64, as in ``authorized_keys``).
"""

from __future__ import annotations

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import SSHCertificate, load_ssh_public_identity

from keyturn.domain.errors import InvalidInput

MAX_PUBLIC_KEY_LENGTH = 16_384
MIN_RSA_BITS = 3072

UserPublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def parse_user_public_key(text: str) -> UserPublicKey:
    """Validate a user's OpenSSH public key line (``ssh-ed25519 AAAA… comment``).

    Accepts Ed25519, ECDSA (NIST P-256/384/521) and RSA of at least 3072 bits.

    Raises:
        InvalidInput: malformed, more than one line, a certificate instead of a key, a DSA key,
            or an RSA key under 3072 bits.
    """
    line = text.strip()
    if not line or len(line) > MAX_PUBLIC_KEY_LENGTH or "\n" in line or "\r" in line:
        raise InvalidInput(
            "ssh_public_key must be one OpenSSH public key line", field="ssh_public_key"
        )
    if line.startswith("ssh-dss"):
        raise InvalidInput("DSA keys are not accepted; use Ed25519", field="ssh_public_key")
    try:
        key = load_ssh_public_identity(line.encode())
    except UnsupportedAlgorithm as exc:
        raise InvalidInput(
            "this SSH key type is not accepted; use Ed25519", field="ssh_public_key"
        ) from exc
    except ValueError as exc:
        raise InvalidInput(
            "ssh_public_key is not a valid OpenSSH public key", field="ssh_public_key"
        ) from exc
    if isinstance(key, SSHCertificate):
        raise InvalidInput(
            "ssh_public_key is a certificate; send the public key (id_ed25519.pub) instead",
            field="ssh_public_key",
        )
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise InvalidInput(
            f"RSA keys must have at least {MIN_RSA_BITS} bits (got {key.key_size})",
            field="ssh_public_key",
        )
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise InvalidInput("this SSH key type is not accepted; use Ed25519", field="ssh_public_key")
    return key
