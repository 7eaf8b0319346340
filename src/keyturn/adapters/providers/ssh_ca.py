"""SSH user-certificate provider: short-lived OpenSSH certificates and a key revocation list.

Formats: OpenSSH certificates (PROTOCOL.certkeys in the OpenSSH sources), public key lines
(RFC 4253 §6.6 key blobs, as in ``authorized_keys``), and KRLs (PROTOCOL.krl), which are written
and read with ``ssh-keygen -k`` / ``ssh-keygen -Q``.

The certificate carries the grant's end as ``valid_before``, so access ends at ``not_after`` even if
Keyturn is down. Early ends (release, admin revoke) add the certificate's serial to the KRL, which
sshd re-reads on every login (``RevokedKeys``).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    SSHCertificateBuilder,
    SSHCertificateType,
    load_ssh_public_identity,
)

from keyturn.config import RoleConfig, SshRoleConfig, UserConfig
from keyturn.domain.errors import ConfigError, ProviderError
from keyturn.domain.model import AccessRequest, Grant
from keyturn.domain.ssh_keys import UserPublicKey, parse_user_public_key
from keyturn.ports import Granted

#: the only principal of a ``gateway_only`` role's certificates: no target's sshd lists it
GATEWAY_ONLY_PRINCIPAL = "keyturn-gateway-only"
_SERIAL_LINE = re.compile(r"^serial:\s*(\d+)(?:-(\d+))?\s*$")


def load_or_create_ca(path: Path, setting: str = "ssh_ca.key_path") -> ed25519.Ed25519PrivateKey:
    """Load an Ed25519 private key (the user CA; the gateway's host key), creating it (mode
    0600, directory 0700) on first start. ``setting`` names the configuration key in errors.

    Raises:
        ConfigError: the key file is readable or writable by group or others, or is not an
            unencrypted OpenSSH Ed25519 private key.
    """
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        public_key_path(path).write_text(ca_public_line(key) + "\n")
        return key
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(
            f"{setting}: {path} has mode {mode:04o}; the key must not be accessible by "
            f"group or others (run: chmod 600 {path})",
            path=setting,
        )
    try:
        loaded = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"{setting}: {path} is not an unencrypted OpenSSH private key", path=setting
        ) from exc
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{setting}: the key must be Ed25519", path=setting)
    key = loaded
    pub = public_key_path(path)
    if not pub.exists():
        pub.write_text(ca_public_line(key) + "\n")
    return key


def public_key_path(key_path: Path) -> Path:
    """Where the CA's public key line is kept (``<key>.pub``)."""
    return key_path.with_name(key_path.name + ".pub")


def ca_public_line(key: ed25519.Ed25519PrivateKey) -> str:
    """The CA public key as an OpenSSH line, for ``TrustedUserCAKeys``."""
    blob = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return blob.decode() + " keyturn-user-ca"


def render_principals(
    templates: tuple[str, ...], *, role: str, target: str, user: str
) -> list[str]:
    """Render principal templates (made safe at config load: ``check_principal_template``)."""
    return [t.format(role=role, target=target, user=user) for t in templates]


def key_id(grant: Grant) -> str:
    """The certificate key id: names the grant, request and user (identity correlation)."""
    return f"keyturn:grant={grant.id}:request={grant.request_id}:user={grant.user_id}"


def gateway_key_id(grant: Grant, connection_id: str) -> str:
    """The key id of a certificate the gateway mints for one upstream login: it names the
    grant, the user and the gateway connection, and never parses as a grant's own key id."""
    return f"keyturn-gateway:grant={grant.id}:user={grant.user_id}:connection={connection_id}"


@dataclass(frozen=True)
class CertificateSpec:
    """Everything that goes into one user certificate (times are aware UTC)."""

    serial: int
    key_id: str
    principals: list[str]
    valid_after: datetime
    valid_before: datetime
    options: SshRoleConfig


def build_certificate(
    ca_key: ed25519.Ed25519PrivateKey, public_key: UserPublicKey, spec: CertificateSpec
) -> str:
    """Sign an OpenSSH user certificate; returns the ``…-cert.pub`` line. Pure: no I/O, no clock."""
    if not spec.principals:
        raise ProviderError("refusing to sign a certificate with no principals", retryable=False)
    builder = (
        SSHCertificateBuilder()
        .public_key(public_key)
        .serial(spec.serial)
        .type(SSHCertificateType.USER)
        .key_id(spec.key_id.encode())
        .valid_principals([p.encode() for p in spec.principals])
        .valid_after(int(spec.valid_after.timestamp()))
        .valid_before(int(spec.valid_before.timestamp()))
    )
    opts = spec.options
    for allowed, name in (
        (opts.allow_pty, b"permit-pty"),
        (opts.allow_port_forwarding, b"permit-port-forwarding"),
        (opts.allow_agent_forwarding, b"permit-agent-forwarding"),
        (opts.allow_x11_forwarding, b"permit-X11-forwarding"),
        (opts.allow_user_rc, b"permit-user-rc"),
    ):
        if allowed:
            builder = builder.add_extension(name, b"")
    if opts.force_command:
        builder = builder.add_critical_option(b"force-command", opts.force_command.encode())
    if opts.source_address:
        builder = builder.add_critical_option(
            b"source-address", ",".join(opts.source_address).encode()
        )
    cert = builder.sign(ca_key)
    return cert.public_bytes().decode() + f" {spec.key_id}"


def _ssh_keygen(what: str, *args: str) -> str:
    """Run ``ssh-keygen`` with ``args``; return its standard output.

    Raises:
        ProviderError: it failed or timed out (retryable: the file system may recover).
    """
    try:
        result = subprocess.run(
            ["ssh-keygen", *args], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProviderError(f"ssh-keygen could not {what}: {exc}", retryable=True) from exc
    if result.returncode != 0:
        raise ProviderError(
            f"ssh-keygen could not {what}: {result.stderr.strip()[:200]}", retryable=True
        )
    return result.stdout


class SshCertificateProvider:
    """:class:`keyturn.ports.Provider` for OpenSSH user certificates.

    Args:
        ca_key: the user CA private key.
        ca_key_path: its path; ``<path>.pub`` is handed to ``ssh-keygen -k``.
        krl_path: where the KRL is written (created empty at start).
        roles: role name → role configuration (principal templates, extensions).
        revoked_serials: returns the serials that must be in the KRL now (from the store).
    """

    name = "ssh"

    def __init__(
        self,
        *,
        ca_key: ed25519.Ed25519PrivateKey,
        ca_key_path: Path,
        krl_path: Path,
        roles: dict[str, RoleConfig],
        clock_skew: timedelta,
        revoked_serials: Callable[[datetime], list[int]],
    ) -> None:
        self._ca_key = ca_key
        self._ca_pub = public_key_path(ca_key_path)
        self.krl_path = krl_path
        self._roles = roles
        self._skew = clock_skew
        self._revoked_serials = revoked_serials
        self._krl_lock = threading.Lock()
        self._krl_serials: list[int] | None = None

    def update_directory(
        self, *, roles: Mapping[str, RoleConfig], users: Mapping[str, UserConfig]
    ) -> None:
        """Use the roles of a reloaded configuration (principals, options); users are not
        needed (the requester's id is in the grant)."""
        self._roles = dict(roles)

    @property
    def ca_public_line(self) -> str:
        """The CA line for targets' ``TrustedUserCAKeys``."""
        return ca_public_line(self._ca_key)

    def privilege(self, role: str, target: str) -> str | None:
        """Each certificate is its own privilege: no overlap between grants."""
        return None

    def check(self) -> None:
        """The CA key is loaded and the KRL file is in place.

        Raises:
            ProviderError: the KRL file is missing (sshd would refuse every login).
        """
        if not self.krl_path.exists():
            raise ProviderError(f"the KRL {self.krl_path} is missing", retryable=True)

    def grant(self, grant: Grant, request: AccessRequest) -> Granted:
        """Sign the requester's key for the grant's window (idempotent: same serial and window).

        A certificate is new data each time: ``already_present`` is always False.
        """
        return Granted({"ssh_certificate": self._certificate(grant, request)})

    def extend(self, grant: Grant, request: AccessRequest) -> dict[str, str]:
        """A new certificate for the longer window, with the grant's serial and key id: the old
        one stays valid until its own end (no gap), and one KRL entry still covers both."""
        return {"ssh_certificate": self._certificate(grant, request)}

    def _certificate(self, grant: Grant, request: AccessRequest) -> str:
        if grant.serial is None or not request.ssh_public_key:
            raise ProviderError(
                "an SSH grant needs a serial and the requester's public key", retryable=False
            )
        role = self._roles[grant.role]
        spec = CertificateSpec(
            serial=grant.serial,
            key_id=key_id(grant),
            principals=self._principals(grant),
            valid_after=grant.not_before - self._skew,
            valid_before=grant.not_after,
            options=role.ssh,
        )
        return build_certificate(self._ca_key, parse_user_public_key(request.ssh_public_key), spec)

    def session_certificate(
        self,
        grant: Grant,
        public_key: UserPublicKey,
        *,
        serial: int,
        connection_id: str,
        valid_after: datetime,
        valid_before: datetime,
    ) -> str:
        """A certificate for the gateway's own login to the grant's target: the grant's
        principals and options, except ``source-address`` (the gateway checked the user's
        address; its own is what the target sees), for ``valid_after``..``valid_before``.

        Raises:
            ProviderError: the role is not configured.
        """
        role = self._roles.get(grant.role)
        if role is None:
            raise ProviderError(f"role {grant.role!r} is not configured", retryable=False)
        spec = CertificateSpec(
            serial=serial,
            key_id=gateway_key_id(grant, connection_id),
            principals=render_principals(
                role.ssh.principals, role=grant.role, target=grant.target, user=grant.user_id
            ),
            valid_after=valid_after,
            valid_before=valid_before,
            options=role.ssh.model_copy(update={"source_address": ()}),
        )
        return build_certificate(self._ca_key, public_key, spec)

    def verify_granted(self, grant: Grant) -> bool:
        """The stored certificate is signed by this CA, for this grant, until ``not_after``."""
        text = grant.credentials.get("ssh_certificate")
        if not text:
            return False
        try:
            cert = load_ssh_public_identity(text.encode())
        except (ValueError, UnsupportedAlgorithm):
            return False
        if not isinstance(cert, SSHCertificate):
            return False
        try:
            cert.verify_cert_signature()
        except InvalidSignature:
            return False
        ca_pub = self._ca_key.public_key().public_bytes_raw()
        signer = cert.signature_key()
        return (
            isinstance(signer, ed25519.Ed25519PublicKey)
            and signer.public_bytes_raw() == ca_pub
            and cert.serial == grant.serial
            and cert.key_id == key_id(grant).encode()
            and cert.valid_before == int(grant.not_after.timestamp())
            and cert.valid_principals == [p.encode() for p in self._principals(grant)]
        )

    def _principals(self, grant: Grant) -> list[str]:
        """The principals of the user's certificate (``gateway_only`` roles: one that opens
        nothing but the gateway, which logs in with the role's own)."""
        role = self._roles.get(grant.role)
        if role is None:
            raise ProviderError(f"role {grant.role!r} is not configured", retryable=False)
        if role.ssh.gateway_only:
            return [GATEWAY_ONLY_PRINCIPAL]
        return render_principals(
            role.ssh.principals, role=grant.role, target=grant.target, user=grant.user_id
        )

    def revoke(self, grant: Grant, now: datetime) -> bool:
        """An early end puts the serial in the KRL; a closed window needs nothing (expiry is in
        the certificate). Returns True when nothing had to be done (the window had closed)."""
        if grant.serial is not None and grant.ends_early(now):
            self.write_krl(now)
            return False
        return True

    def verify_revoked(self, grant: Grant, now: datetime) -> bool:
        """Gone if the window closed, or if the serial reads back from the KRL file."""
        if not grant.ends_early(now) and now >= grant.not_after:
            return True
        serial = grant.serial
        return serial is not None and any(lo <= serial <= hi for lo, hi in self.read_krl_ranges())

    def ensure_krl(self, now: datetime) -> None:
        """Write the KRL if it is missing or out of date (sshd refuses logins with no KRL file)."""
        if not self.krl_path.exists() or self._krl_serials != self._revoked_serials(now):
            self.write_krl(now)

    def write_krl(self, now: datetime) -> None:
        """Rebuild the KRL from the store's list of early-ended serials (atomic replace).

        Raises:
            ProviderError: ``ssh-keygen`` failed (retryable).
        """
        with self._krl_lock:
            serials = self._revoked_serials(now)  # read under the lock: no stale list wins
            try:
                self._write_krl_file(serials)
            except OSError as exc:
                raise ProviderError(
                    f"cannot write the KRL: {exc.strerror}", retryable=True
                ) from exc
            self._krl_serials = serials

    def _write_krl_file(self, serials: list[int]) -> None:
        self.krl_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.krl_path.parent) as tmp:
            spec = Path(tmp) / "spec"
            spec.write_text("".join(f"serial: {s}\n" for s in serials))
            out = Path(tmp) / "krl"
            _ssh_keygen(
                "write the KRL", "-q", "-k", "-f", str(out), "-s", str(self._ca_pub), str(spec)
            )
            os.chmod(out, 0o644)
            os.replace(out, self.krl_path)

    def read_krl_ranges(self) -> list[tuple[int, int]]:
        """Serial ranges (inclusive) listed in the KRL file, read back with ``ssh-keygen -Q -l``.

        Raises:
            ProviderError: the file cannot be read or parsed (retryable).
        """
        listing = _ssh_keygen("read the KRL", "-Q", "-l", "-f", str(self.krl_path))
        ranges = []
        for line in listing.splitlines():
            match = _SERIAL_LINE.match(line.strip())
            if match:
                low = int(match.group(1))
                ranges.append((low, int(match.group(2) or low)))
        return ranges

    def krl_bytes(self, now: datetime) -> bytes:
        """The current KRL (rebuilt first if the store's list changed)."""
        self.ensure_krl(now)
        return self.krl_path.read_bytes()
