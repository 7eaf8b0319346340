"""The Provider contract: FakeProvider, the real SSH CA and the real LDAP provider alike.

The same tests run against all three (``case`` fixture). The SSH provider is real: an Ed25519 CA
on disk, certificates signed with ``cryptography``, and a KRL written and read back with the local
``ssh-keygen``. The LDAP provider talks to a real slapd (``keyturn.lab``) and reads the group
back after every change. The test plays the store: when it ends a grant early it adds the
grant's serial to the list the provider's ``revoked_serials`` returns. SSH-specific tests
(certificate fields, KRL contents, CA key file safety, which user keys are accepted) follow.
"""

from __future__ import annotations

import base64
import dataclasses
import stat
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    SSHCertificateType,
    load_ssh_public_identity,
)

from keyturn.adapters.providers.ldap_group import LdapGroupProvider, build_ldap_provider
from keyturn.adapters.providers.ssh_ca import SshCertificateProvider, load_or_create_ca
from keyturn.config import RoleConfig, SshRoleConfig
from keyturn.domain.errors import ConfigError, InvalidInput
from keyturn.domain.model import (
    AccessRequest,
    Decision,
    EndReason,
    Grant,
    GrantStatus,
    Outcome,
    RequestStatus,
)
from keyturn.domain.ssh_keys import parse_user_public_key
from keyturn.lab import Slapd, example_directory, make_user_key
from keyturn.ports import Provider
from keyturn.testing import FakeProvider
from tests.conftest import example_data, ldap_env, load

INTEGRATION = pytest.mark.integration

NOW = datetime(2026, 11, 17, 2, 45, tzinfo=UTC)
WINDOW = timedelta(minutes=30)
SERIAL = 7_000_000_000_000_000_001  # 63 bits, like random_serial's
SKEW = timedelta(seconds=30)  # the example configuration's ssh_ca.clock_skew (default)


# domain objects ------------------------------------------------------------------------------
def a_request(
    public_key: str, *, n: int = 1, user: str = "alice", role: str = "server-admin"
) -> AccessRequest:
    """An approved request for ``role`` on db-1 carrying the user's public key."""
    return AccessRequest(
        id=f"req_{n:04d}",
        requester_id=user,
        role=role,
        target="db-1",
        duration=WINDOW,
        justification="INC-1: replica lag on db-1",
        ticket="INC-1",
        ssh_public_key=public_key,
        status=RequestStatus.APPROVED,
        decision=Decision(Outcome.AUTO_APPROVE, "standard-auto-approve", ("standard tier",)),
        created_at=NOW,
        updated_at=NOW,
    )


def a_grant(
    request: AccessRequest,
    *,
    n: int = 1,
    serial: int | None = SERIAL,
    provider: str = "ssh",
    privilege: str | None = None,
) -> Grant:
    """The provisioning grant made from ``request``: window NOW..NOW+30m."""
    return Grant(
        id=f"grt_{n:04d}",
        request_id=request.id,
        user_id=request.requester_id,
        role=request.role,
        target=request.target,
        provider=provider,
        privilege=privilege,
        status=GrantStatus.PROVISIONING,
        not_before=NOW,
        not_after=NOW + WINDOW,
        created_at=NOW,
        updated_at=NOW,
        serial=serial,
    )


def activate(grant: Grant, credentials: dict[str, str]) -> Grant:
    """The grant as the service stores it after a successful provider.grant."""
    return grant.transition(GrantStatus.ACTIVE, NOW, credentials=credentials)


# providers -------------------------------------------------------------------------------------
@dataclass
class Case:
    """A provider under test, a requester key, and the simulated store's early-ended serials."""

    provider: Provider
    public_key: str
    revoked: list[int] = field(default_factory=list)
    role: str = "server-admin"

    def request(self, n: int = 1, user: str = "alice") -> AccessRequest:
        """An approved request of this case's role."""
        return a_request(self.public_key, n=n, user=user, role=self.role)

    def grant_for(self, request: AccessRequest, n: int = 1, serial: int = SERIAL) -> Grant:
        """The provisioning grant of ``request`` as the service writes it."""
        is_ssh = self.provider.name == "ssh"
        return a_grant(
            request,
            n=n,
            serial=serial if is_ssh else None,
            provider=self.provider.name,
            privilege=self.provider.privilege(request.role, request.target),
        )

    def end_early(self, grant: Grant, when: datetime) -> Grant:
        """End ``grant`` before its window closes, as the service does (write-ahead)."""
        ended = grant.transition(
            GrantStatus.REVOKING,
            when,
            end_reason=EndReason.RELEASED,
            ended_by=grant.user_id,
            ended_at=when,
        )
        if ended.serial is not None:
            self.revoked.append(ended.serial)  # what early_revoked_serials now returns
        return ended

    def granted(
        self, n: int = 1, serial: int = SERIAL, user: str = "alice"
    ) -> tuple[AccessRequest, Grant]:
        """A request and its grant, provisioned through the provider and active."""
        request = self.request(n=n, user=user)
        grant = self.grant_for(request, n=n, serial=serial)
        return request, activate(grant, self.provider.grant(grant, request).credentials)


@dataclass
class SshCase(Case):
    """A Case whose provider is the real SSH certificate provider."""

    ssh: SshCertificateProvider = field(kw_only=True)
    ca_path: Path = field(kw_only=True)


def ssh_provider(
    tmp_path: Path,
    ca_path: Path,
    revoked_serials: Callable[[datetime], list[int]],
    roles: dict[str, RoleConfig] | None = None,
) -> SshCertificateProvider:
    """A real SSH provider with the example configuration's roles and a KRL next to the CA."""
    config = load(example_data(tmp_path)).config
    assert config.ssh_ca.clock_skew == SKEW
    provider = SshCertificateProvider(
        ca_key=load_or_create_ca(ca_path),
        ca_key_path=ca_path,
        krl_path=ca_path.with_name("revoked.krl"),
        roles=roles if roles is not None else {r.name: r for r in config.roles},
        clock_skew=config.ssh_ca.clock_skew,
        revoked_serials=revoked_serials,
    )
    provider.ensure_krl(NOW)  # as bootstrap.build does at start
    return provider


def make_ssh_case(tmp_path: Path) -> SshCase:
    """The SSH provider with a fresh CA, a fresh user key and an empty revocation list."""
    public_key = make_user_key(tmp_path / "user" / "id_ed25519", "alice@laptop").read_text()
    ca_path = tmp_path / "ca" / "user_ca"
    revoked: list[int] = []
    provider = ssh_provider(tmp_path, ca_path, lambda _now: sorted(revoked))
    return SshCase(provider, public_key.strip(), revoked, ssh=provider, ca_path=ca_path)


@pytest.fixture(params=["fake", "fake-shared", "ssh", pytest.param("ldap", marks=INTEGRATION)])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    """Each provider implementation, with nothing granted or revoked yet."""
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests x"
    if request.param == "fake":
        yield Case(FakeProvider("ssh"), key)
    elif request.param == "fake-shared":  # the fake standing in for a directory group
        yield Case(
            FakeProvider("ldap", shared={"db-admins": "cn=db-admins"}), key, role="db-admins"
        )
    elif request.param == "ssh":
        yield make_ssh_case(tmp_path)
    else:
        directory = example_directory(tmp_path / "slapd")
        provider = ldap_provider(tmp_path, directory)
        try:
            yield Case(provider, key, role="db-admins")
        finally:
            provider.close()
            directory.stop()


def ldap_provider(tmp_path: Path, directory: Slapd) -> LdapGroupProvider:
    """The real LDAP provider, configured like the example, bound to ``directory``."""
    config = load(example_data(tmp_path, ldap_url=directory.url)).config
    assert config.ldap is not None
    return build_ldap_provider(
        config.ldap,
        roles={r.name: r for r in config.roles},
        users={u.id: u for u in config.users},
        environ=ldap_env(directory),
    )


@pytest.fixture
def ssh(tmp_path: Path) -> SshCase:
    """The real SSH provider."""
    return make_ssh_case(tmp_path)


# the contract ------------------------------------------------------------------------------------
class TestProviderContract:
    """Behaviour every Provider must show."""

    def test_grant_returns_credentials_that_verify(self, case: Case) -> None:
        """grant() returns string credentials and verify_granted() then reads the grant back."""
        request = case.request()
        grant = case.grant_for(request)
        assert not case.provider.verify_granted(grant)  # nothing granted yet
        granted = case.provider.grant(grant, request)
        assert not granted.already_present
        credentials = granted.credentials
        assert credentials
        assert all(isinstance(v, str) and v for v in credentials.values())
        assert case.provider.verify_granted(activate(grant, credentials))

    def test_granting_twice_is_idempotent(self, case: Case) -> None:
        """A second grant() of the same grant succeeds and both credentials verify."""
        request = case.request()
        grant = case.grant_for(request)
        first = case.provider.grant(grant, request).credentials
        second = case.provider.grant(grant, request).credentials
        assert first.keys() == second.keys()
        assert case.provider.verify_granted(activate(grant, second))
        assert case.provider.verify_granted(activate(grant, first))

    def test_live_grant_is_not_revoked(self, case: Case) -> None:
        """verify_revoked() is False for a granted, never-ended grant while its window is open."""
        _, grant = case.granted()
        assert not case.provider.verify_revoked(grant, NOW)
        assert not case.provider.verify_revoked(grant, grant.not_after - timedelta(seconds=1))

    def test_early_end_is_revoked_and_verified(self, case: Case) -> None:
        """A grant released early is observably gone after revoke(), and not before."""
        _, grant = case.granted()
        when = NOW + timedelta(minutes=5)
        ended = case.end_early(grant, when)
        assert ended.ends_early(when)
        assert not case.provider.verify_revoked(ended, when)  # revoke() has not run yet
        case.provider.revoke(ended, when)
        assert case.provider.verify_revoked(ended, when)

    def test_revoke_is_idempotent(self, case: Case) -> None:
        """Revoking again what is already revoked succeeds and stays verified."""
        _, grant = case.granted()
        when = NOW + timedelta(minutes=5)
        ended = case.end_early(grant, when)
        case.provider.revoke(ended, when)
        case.provider.revoke(ended, when)
        assert case.provider.verify_revoked(ended, when)
        gone = ended.transition(GrantStatus.REVOKED, when)
        case.provider.revoke(gone, when + timedelta(minutes=1))
        assert case.provider.verify_revoked(gone, when + timedelta(minutes=1))

    def test_revoking_one_grant_leaves_another_live(self, case: Case) -> None:
        """Revoking one grant neither revokes nor invalidates another grant."""
        _, first = case.granted(n=1, serial=SERIAL)
        _, second = case.granted(n=2, serial=SERIAL + 1, user="bob")
        when = NOW + timedelta(minutes=5)
        ended = case.end_early(first, when)
        case.provider.revoke(ended, when)
        assert case.provider.verify_revoked(ended, when)
        assert not case.provider.verify_revoked(second, when)
        assert case.provider.verify_granted(second)

    def test_grant_past_its_window_is_revoked(self, case: Case) -> None:
        """A grant whose window has closed is revoked (expired) and verified gone."""
        _, grant = case.granted()
        expired = grant.transition(
            GrantStatus.REVOKING,
            grant.not_after,
            end_reason=EndReason.EXPIRED,
            ended_by="system:worker",
            ended_at=grant.not_after,
        )
        case.provider.revoke(expired, grant.not_after)
        assert case.provider.verify_revoked(expired, grant.not_after)
        assert case.provider.verify_revoked(expired, grant.not_after + timedelta(hours=1))


# SSH certificates --------------------------------------------------------------------------------
def certificate(grant: Grant) -> SSHCertificate:
    """The grant's certificate, parsed."""
    cert = load_ssh_public_identity(grant.credentials["ssh_certificate"].encode())
    assert isinstance(cert, SSHCertificate)
    return cert


def ssh_keygen_list(tmp_path: Path, grant: Grant) -> str:
    """What ``ssh-keygen -L`` (OpenSSH's own parser) shows for the grant's certificate."""
    path = tmp_path / "id_ed25519-cert.pub"
    path.write_text(grant.credentials["ssh_certificate"] + "\n")
    return subprocess.run(
        ["ssh-keygen", "-L", "-f", str(path)], capture_output=True, text=True, check=True
    ).stdout


class TestSshCertificates:
    """The real SSH provider's certificates, KRL and keys."""

    def test_certificate_fields_match_the_grant(self, ssh: SshCase, tmp_path: Path) -> None:
        """Serial, key id, principals, validity and extensions come from the grant and role."""
        _, grant = ssh.granted()
        cert = certificate(grant)
        assert cert.type is SSHCertificateType.USER
        assert cert.serial == SERIAL
        key_id = cert.key_id.decode()
        for part in (grant.id, grant.request_id, grant.user_id):
            assert part in key_id
        assert cert.valid_principals == [b"server-admin@db-1"]
        assert cert.valid_before == int(grant.not_after.timestamp())
        assert cert.valid_after == int((grant.not_before - SKEW).timestamp())
        assert b"permit-pty" in cert.extensions
        for forbidden in (
            b"permit-port-forwarding",
            b"permit-agent-forwarding",
            b"permit-X11-forwarding",
            b"permit-user-rc",
        ):
            assert forbidden not in cert.extensions
        assert cert.critical_options == {}
        user_key = load_ssh_public_identity(ssh.public_key.encode())
        assert isinstance(user_key, ed25519.Ed25519PublicKey)
        certified = cert.public_key()
        assert isinstance(certified, ed25519.Ed25519PublicKey)
        assert certified.public_bytes_raw() == user_key.public_bytes_raw()
        listing = ssh_keygen_list(tmp_path, grant)  # OpenSSH reads it the same way
        assert f"Serial: {SERIAL}" in listing
        assert "server-admin@db-1" in listing

    def test_role_options_become_critical_options(self, ssh: SshCase, tmp_path: Path) -> None:
        """A role's force_command and source_address become the certificate's critical options."""
        role = RoleConfig(
            name="server-admin",
            ssh=SshRoleConfig(
                force_command="/usr/bin/psql -c 'select 1'",
                source_address=("127.0.0.1/32", "10.0.0.0/8"),
                allow_pty=False,
            ),
        )
        provider = ssh_provider(
            tmp_path, ssh.ca_path, lambda _now: [], roles={"server-admin": role}
        )
        request = a_request(ssh.public_key)
        grant = a_grant(request)
        grant = activate(grant, provider.grant(grant, request).credentials)
        cert = certificate(grant)
        assert cert.critical_options == {
            b"force-command": b"/usr/bin/psql -c 'select 1'",
            b"source-address": b"127.0.0.1/32,10.0.0.0/8",
        }
        assert cert.extensions == {}
        listing = ssh_keygen_list(tmp_path, grant)
        assert "force-command /usr/bin/psql -c 'select 1'" in listing
        assert "source-address 127.0.0.1/32,10.0.0.0/8" in listing
        assert provider.verify_granted(grant)

    def test_krl_lists_the_serial_after_revoke(self, ssh: SshCase) -> None:
        """The KRL read back with ssh-keygen holds the serial after revoke(), not before."""
        _, grant = ssh.granted()
        _, other = ssh.granted(n=2, serial=SERIAL + 1000)

        def listed(serial: int) -> bool:
            return any(lo <= serial <= hi for lo, hi in ssh.ssh.read_krl_ranges())

        assert not listed(SERIAL)
        when = NOW + timedelta(minutes=1)
        ended = ssh.end_early(grant, when)
        assert not listed(SERIAL)  # the store knows; the file is written by revoke()
        ssh.ssh.revoke(ended, when)
        assert listed(SERIAL)
        assert not listed(other.serial or 0)

    def test_expired_grant_is_not_written_to_the_krl(self, ssh: SshCase) -> None:
        """Revoking at or after not_after relies on valid_before; the KRL stays unchanged."""
        _, grant = ssh.granted()
        before = ssh.ssh.krl_path.read_bytes()
        ssh.ssh.revoke(grant, grant.not_after)
        assert ssh.ssh.krl_path.read_bytes() == before
        assert ssh.ssh.read_krl_ranges() == []
        assert ssh.ssh.verify_revoked(grant, grant.not_after)

    def test_certificate_from_another_ca_does_not_verify(
        self, ssh: SshCase, tmp_path: Path
    ) -> None:
        """A valid certificate for the same grant but signed by another CA is not accepted."""
        other = ssh_provider(
            tmp_path / "other", tmp_path / "other" / "ca" / "user_ca", lambda _now: []
        )
        assert other.ca_public_line != ssh.ssh.ca_public_line
        request = a_request(ssh.public_key)
        grant = a_grant(request)
        forged = activate(grant, other.grant(grant, request).credentials)
        assert other.verify_granted(forged)
        assert not ssh.ssh.verify_granted(forged)

    def test_certificate_for_another_grant_does_not_verify(self, ssh: SshCase) -> None:
        """The certificate must carry the grant's serial, id and end: any mismatch fails."""
        _, grant = ssh.granted()
        assert ssh.ssh.verify_granted(grant)
        assert not ssh.ssh.verify_granted(dataclasses.replace(grant, serial=SERIAL + 1))
        assert not ssh.ssh.verify_granted(dataclasses.replace(grant, id="grt_9999"))
        longer = dataclasses.replace(grant, not_after=grant.not_after + timedelta(hours=1))
        assert not ssh.ssh.verify_granted(longer)
        assert not ssh.ssh.verify_granted(dataclasses.replace(grant, credentials={}))


class TestCaKeyFile:
    """The CA private key file is created private and refused when it is not."""

    def test_created_key_is_private_and_reloads(self, tmp_path: Path) -> None:
        """A new CA key is written 0600 in a 0700 directory, with a .pub; loading returns it."""
        path = tmp_path / "ca" / "user_ca"
        key = load_or_create_ca(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        pub = path.with_name("user_ca.pub").read_text()
        assert pub.startswith("ssh-ed25519 ")
        again = load_or_create_ca(path)
        assert again.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
    def test_key_readable_by_others_is_refused(self, tmp_path: Path, mode: int) -> None:
        """A CA key file accessible by group or others raises ConfigError naming the key."""
        path = tmp_path / "ca" / "user_ca"
        load_or_create_ca(path)
        path.chmod(mode)
        with pytest.raises(ConfigError) as caught:
            load_or_create_ca(path)
        assert caught.value.details["path"] == "ssh_ca.key_path"


# which user keys are signed ----------------------------------------------------------------------
def _sshstr(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def handmade_dsa_line() -> str:
    """A syntactically valid ``ssh-dss`` public key line (RFC 4253 §6.6 blob)."""
    blob = _sshstr(b"ssh-dss") + b"".join(_sshstr(bytes([0x01]) * 20) for _ in range(4))
    return "ssh-dss " + base64.b64encode(blob).decode() + " old@laptop"


def dsa_line(tmp_path: Path) -> str:
    """A DSA key line from the local ssh-keygen, or a hand-made one if it no longer makes DSA."""
    path = tmp_path / "id_dsa"
    try:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "dsa", "-N", "", "-f", str(path)],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return handmade_dsa_line()
    return path.with_name("id_dsa.pub").read_text().strip()


def rsa_line(bits: int) -> str:
    """A fresh RSA public key line of ``bits`` bits."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def ecdsa_line() -> str:
    """A fresh ECDSA P-256 public key line."""
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


class TestUserPublicKeys:
    """parse_user_public_key accepts modern keys and rejects everything else with InvalidInput."""

    @pytest.mark.parametrize(
        ("kind", "reason"),
        [
            ("empty", "one OpenSSH public key line"),
            ("not-a-key", "not a valid OpenSSH public key|key type is not accepted"),
            ("bad-base64", "not a valid OpenSSH public key"),
            ("truncated-blob", "not a valid OpenSSH public key"),
            ("two-lines", "one OpenSSH public key line"),
            ("certificate", "is a certificate"),
            ("dsa", "DSA keys are not accepted"),
            ("handmade-dsa", "DSA keys are not accepted"),
            ("rsa-2048", "at least 3072 bits"),
        ],
    )
    def test_rejected(self, kind: str, reason: str, ssh: SshCase, tmp_path: Path) -> None:
        """Malformed text, two lines, certificates, DSA and short RSA keys raise InvalidInput."""
        good = ssh.public_key
        _, grant = ssh.granted()
        lines = {
            "empty": lambda: "  \n",
            "not-a-key": lambda: "hello world",
            "bad-base64": lambda: "ssh-ed25519 !!!not-base64!!! alice",
            "truncated-blob": lambda: good.split()[0] + " " + good.split()[1][:20] + " alice",
            "two-lines": lambda: f"{good}\n{good}",
            "certificate": lambda: grant.credentials["ssh_certificate"],
            "dsa": lambda: dsa_line(tmp_path),
            "handmade-dsa": handmade_dsa_line,
            "rsa-2048": lambda: rsa_line(2048),
        }
        text = lines[kind]()
        with pytest.raises(InvalidInput, match=reason) as caught:
            parse_user_public_key(text)
        assert caught.value.details["field"] == "ssh_public_key"

    def test_accepted(self, ssh: SshCase) -> None:
        """Ed25519 (with surrounding whitespace), ECDSA P-256 and RSA 3072 keys are accepted."""
        ed = parse_user_public_key(f"  {ssh.public_key}\n")
        assert isinstance(ed, ed25519.Ed25519PublicKey)
        assert isinstance(parse_user_public_key(ecdsa_line()), ec.EllipticCurvePublicKey)
        rsa_key = parse_user_public_key(rsa_line(3072))
        assert isinstance(rsa_key, rsa.RSAPublicKey)
        assert rsa_key.key_size == 3072
