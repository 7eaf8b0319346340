"""Throwaway real OpenSSH and OpenLDAP servers and client calls, for ``keyturn demo`` and tests.

An sshd runs in the foreground (``sshd -D -e -f CONFIG``) on a free loopback port, trusting the
Keyturn CA (``TrustedUserCAKeys``), mapping logins to principals (``AuthorizedPrincipalsFile``)
and reading the KRL on every login (``RevokedKeys``). It runs as the current user and accepts
logins only as that user.

A slapd runs in the foreground (``slapd -d 0``) on a free loopback port with one mdb database,
the memberof overlay and a Keyturn service account that may write group membership and nothing
else. Nothing here talks beyond 127.0.0.1.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import httpx
import ldap
import ldap.dn
import ldap.ldapobject

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound and released; good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_binary(candidates: tuple[str, ...], names: tuple[str, ...], package: str) -> str:
    """The first executable of ``candidates``, else the first of ``names`` on ``PATH``.

    Raises:
        FileNotFoundError: none found; the message names the Debian ``package`` to install.
    """
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    for name in names:
        if found := shutil.which(name):
            return found
    raise FileNotFoundError(f"{names[0]} not found: apt-get install {package}")


def sshd_binary() -> str:
    """Path of sshd. Raises FileNotFoundError with the install hint."""
    return find_binary(SSHD_CANDIDATES, ("sshd",), "openssh-server")


def make_user_key(path: Path, comment: str) -> Path:
    """Create an Ed25519 key pair at ``path`` (private, 0600) and ``path.pub``; return the .pub."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_name(path.name + ".pub")


class Daemon:
    """One foreground server process of the lab: started with its output appended to a log
    file, waited for until a probe says it is ready, stopped with SIGTERM (SIGKILL after 5 s).

    Args:
        name: for error messages (``sshd``, ``slapd``).
        log_path: where stdout and stderr go (appended across restarts).
    """

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, argv: list[str], ready: Callable[[], bool], timeout: float) -> None:
        """Spawn ``argv`` and return once ``ready()`` is true.

        Raises:
            RuntimeError: the process exited or was not ready within ``timeout`` seconds (with
                the log's tail); it is stopped first.
        """
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_text()[-2000:]}")
            if ready():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            f"{self.name} did not start within {timeout}s:\n{self.log_text()[-2000:]}"
        )

    def log_text(self) -> str:
        """What the process logged so far (all runs)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop the process and wait for it; safe to call twice."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class Sshd:
    """A throwaway sshd for one target.

    Args:
        workdir: a private directory for its config, host key, principals and log.
        ca_public_key: file with the Keyturn CA line.
        krl: the KRL file (must exist before logins).
        principals: the principals that may log in as the current user.
    """

    workdir: Path
    ca_public_key: Path
    krl: Path
    principals: list[str]
    port: int = field(default_factory=free_port)
    login: str = field(default_factory=getpass.getuser)

    def __post_init__(self) -> None:
        self._daemon = Daemon("sshd", self.workdir / "sshd.log")

    def start(self, timeout: float = 10.0) -> Sshd:
        """Write the config and start sshd; return when it accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        host_key = self.workdir / "host_ed25519"
        if not host_key.exists():
            make_user_key(host_key, "keyturn-lab-host")
        principals_dir = self.workdir / "principals"
        principals_dir.mkdir(exist_ok=True)
        (principals_dir / self.login).write_text("".join(p + "\n" for p in self.principals))
        config = self.workdir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    f"PidFile {self.workdir / 'sshd.pid'}",
                    f"TrustedUserCAKeys {self.ca_public_key}",
                    f"AuthorizedPrincipalsFile {principals_dir}/%u",
                    f"RevokedKeys {self.krl}",
                    "AuthorizedKeysFile none",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "LogLevel VERBOSE",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self._daemon.start([sshd_binary(), "-D", "-e", "-f", str(config)], self._answers, timeout)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                return sock.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def log_text(self) -> str:
        """What sshd logged so far."""
        return self._daemon.log_text()

    def stop(self) -> None:
        """Stop sshd and wait for it."""
        self._daemon.stop()


#: OpenSSH client options for labs, tests and the demo: no user config, no agent, never prompt
SSH_CLIENT_OPTIONS = (
    "-F",
    "/dev/null",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "IdentityAgent=none",
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=5",
    "-o",
    "LogLevel=ERROR",
)


def ssh_client_args(
    private_key: Path,
    certificate: Path,
    *,
    port: int,
    destination: str,
    known_hosts: Path | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """``ssh`` with exactly this key and certificate to ``destination`` (``user@host``), then
    ``extra`` options; the host key is checked against ``known_hosts`` (None: not checked)."""
    hosts = (
        ("-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}")
        if known_hosts is not None
        else ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null")
    )
    return [
        "ssh",
        *SSH_CLIENT_OPTIONS,
        *hosts,
        "-i",
        str(private_key),
        "-o",
        f"CertificateFile={certificate}",
        "-p",
        str(port),
        *extra,
        destination,
    ]


def ssh_login(
    sshd: Sshd, private_key: Path, certificate: Path, command: str = "true", timeout: float = 15
) -> subprocess.CompletedProcess[str]:
    """Run ``ssh`` with exactly this key and certificate against ``sshd``; never prompts."""
    args = ssh_client_args(
        private_key, certificate, port=sshd.port, destination=f"{sshd.login}@127.0.0.1"
    )
    return subprocess.run(
        [*args, command], capture_output=True, text=True, timeout=timeout, check=False
    )


SLAPD_CANDIDATES = ("/usr/sbin/slapd", "/usr/local/libexec/slapd", "/usr/local/sbin/slapd")
LDAP_MODULE_DIR = Path("/usr/lib/ldap")
LDAP_SCHEMA_DIR = Path("/etc/ldap/schema")
LDAP_SCHEMAS = ("core", "cosine", "inetorgperson", "nis")
MDB_MAXSIZE = 1 << 30  # bytes (1 GiB): the mdb map size, sparse on disk
EMERGENCY_UID = "breakglass"
"""The uid of the lab directory's emergency account (``break_glass.directory_account``)."""
LDAP_TIMEOUT = 5.0  # seconds: connect and per-operation timeout of :meth:`Slapd.connect`
GROUP_MEMBER_ATTRIBUTE = {"groupOfNames": "member", "groupOfUniqueNames": "uniqueMember"}


def slapd_binary() -> str:
    """Path of slapd. Raises FileNotFoundError with the install hint."""
    return find_binary(SLAPD_CANDIDATES, ("slapd",), "slapd ldap-utils")


def ssha(password: str) -> str:
    """``{SSHA}`` + base64(SHA-1(UTF-8 password + salt) + salt), with an 8-byte random salt.

    The RFC 2307-style salted hash slapd checks natively; the clear password is never stored.
    """
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()  # noqa: S324 - the {SSHA} scheme
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def child_dn(attribute: str, value: str, parent: str) -> str:
    """The DN ``attribute=value,parent`` with ``value`` escaped per RFC 4514 (any text)."""
    rdn: list[tuple[str, str, int]] = [(attribute, value, ldap.AVA_STRING)]
    return str(ldap.dn.dn2str([rdn, *ldap.dn.str2dn(parent)]))


@dataclass
class Slapd:
    """A throwaway OpenLDAP server with one database under ``suffix``.

    Layout: ``suffix`` (dcObject + organization), ``ou=people`` (inetOrgPerson users, RDN
    ``uid``), ``ou=groups`` (groupOfNames / groupOfUniqueNames) and ``ou=services`` holding the
    service account ``cn=keyturn`` (password ``service_password``). The root DN
    ``cn=admin,<suffix>`` (password ``root_password``) bypasses all ACLs. ACLs: the service
    account may write ``member`` / ``uniqueMember`` under ``ou=groups`` and the password of
    the emergency account :attr:`emergency_dn`, and only read elsewhere; every bound identity
    may read (passwords excepted); anonymous may only bind.

    Args:
        workdir: a private directory for ``slapd.conf``, ``slapd.log``, the pid/args files and
            the mdb database in ``data/`` (kept across :meth:`stop` / :meth:`start`).
        suffix: the database suffix; its first RDN must be ``dc=`` or ``o=``.
        port: the loopback TCP port (keep it to restart on the same URL).
        root_password: the root DN's password (only its ``{SSHA}`` hash is written).
        service_password: the service account's password (set when the data is first seeded).
    """

    workdir: Path
    suffix: str = "dc=example,dc=org"
    port: int = field(default_factory=free_port)
    root_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    service_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))

    def __post_init__(self) -> None:
        self._daemon = Daemon("slapd", self.workdir / "slapd.log")

    @property
    def url(self) -> str:
        """``ldap://127.0.0.1:<port>``."""
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def root_dn(self) -> str:
        """``cn=admin,<suffix>``: the rootdn, not subject to ACLs."""
        return child_dn("cn", "admin", self.suffix)

    @property
    def service_dn(self) -> str:
        """``cn=keyturn,ou=services,<suffix>``: Keyturn's own bind DN."""
        return child_dn("cn", "keyturn", child_dn("ou", "services", self.suffix))

    @property
    def emergency_dn(self) -> str:
        """The emergency (break-glass) account ``uid=breakglass,ou=people,…``: Keyturn's service
        DN may replace its password (RFC 3062), nobody may read it."""
        return child_dn("uid", EMERGENCY_UID, self.people_base)

    @property
    def people_base(self) -> str:
        """``ou=people,<suffix>``."""
        return child_dn("ou", "people", self.suffix)

    @property
    def groups_base(self) -> str:
        """``ou=groups,<suffix>``."""
        return child_dn("ou", "groups", self.suffix)

    def start(self, timeout: float = 10.0) -> Slapd:
        """Write the config and start slapd; return once the root DN can bind.

        On an empty ``data/`` directory the base entries and the service account are added
        first; otherwise the existing data is served as is (a restart after :meth:`stop`).

        Args:
            timeout: seconds to wait for a successful bind.

        Raises:
            RuntimeError: slapd exited or did not accept a bind in time (with the log tail).
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        data = self.workdir / "data"
        data.mkdir(mode=0o700, exist_ok=True)
        data.chmod(0o700)
        seed = not any(data.iterdir())
        config = self.workdir / "slapd.conf"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self._config_text(data))
        argv = [slapd_binary(), "-h", f"{self.url}/", "-f", str(config), "-d", "0"]
        self._daemon.start(argv, self._binds, timeout)
        if seed:
            try:
                self._seed()
            except BaseException:
                self.stop()
                raise
        return self

    def _config_text(self, data: Path) -> str:
        groups, service = self.groups_base, self.service_dn
        return "\n".join(
            [
                *(f"include {LDAP_SCHEMA_DIR / name}.schema" for name in LDAP_SCHEMAS),
                f"modulepath {LDAP_MODULE_DIR}",
                "moduleload back_mdb",
                "moduleload memberof",
                f"pidfile {self.workdir / 'slapd.pid'}",
                f"argsfile {self.workdir / 'slapd.args'}",
                "",
                "database mdb",
                f'suffix "{self.suffix}"',
                f'rootdn "{self.root_dn}"',
                f"rootpw {ssha(self.root_password)}",
                f"directory {data}",
                f"maxsize {MDB_MAXSIZE}",
                "index objectClass eq",
                "index uid eq",
                "index member eq",
                "index uniqueMember eq",
                "overlay memberof",
                "",
                f'access to dn.exact="{self.emergency_dn}" attrs=userPassword',
                f'    by dn.exact="{service}" write',
                "    by anonymous auth",
                "    by * none",
                "access to attrs=userPassword",
                "    by anonymous auth",
                "    by * none",
                f'access to dn.subtree="{groups}" attrs=member,uniqueMember',
                f'    by dn.exact="{service}" write',
                "    by users read",
                "    by * none",
                f'access to dn.subtree="{groups}" attrs=entry',
                f'    by dn.exact="{service}" read',
                "    by users read",
                "    by anonymous auth",
                "    by * none",
                "access to *",
                "    by users read",
                "    by anonymous auth",
                "    by * none",
                "",
            ]
        )

    def _binds(self) -> bool:
        try:
            self.connect().unbind_s()
        except ldap.LDAPError:
            return False
        return True

    def _seed(self) -> None:
        attribute, value, _ = ldap.dn.str2dn(self.suffix)[0][0]
        top: list[tuple[str, list[bytes]]]
        if attribute.lower() == "dc":
            top = [("objectClass", [b"dcObject", b"organization"]), ("o", [value.encode()])]
        elif attribute.lower() == "o":
            top = [("objectClass", [b"organization"])]
        else:
            raise ValueError(f"suffix must start with dc= or o=: {self.suffix!r}")
        ou = [("objectClass", [b"organizationalUnit"])]
        conn = self.connect()
        try:
            conn.add_s(self.suffix, top)
            for base in ("people", "groups", "services"):
                conn.add_s(child_dn("ou", base, self.suffix), ou)
            conn.add_s(
                self.service_dn,
                [
                    ("objectClass", [b"applicationProcess", b"simpleSecurityObject"]),
                    ("userPassword", [ssha(self.service_password).encode()]),
                ],
            )
        finally:
            conn.unbind_s()

    def log_text(self) -> str:
        """What slapd logged so far (all runs on this workdir)."""
        return self._daemon.log_text()

    def stop(self) -> None:
        """Stop slapd (SIGTERM, SIGKILL after 5 s) and wait for it; safe to call twice."""
        self._daemon.stop()

    def connect(self, as_root: bool = True) -> ldap.ldapobject.LDAPObject:
        """A new LDAPv3 connection bound as the root DN, or as the service account.

        Timeouts (network and per operation) are :data:`LDAP_TIMEOUT` seconds; referrals are
        not chased. The caller unbinds it (``unbind_s()``).

        Raises:
            ldap.LDAPError: e.g. ``ldap.SERVER_DOWN`` when slapd is stopped.
        """
        conn = ldap.initialize(self.url)
        try:
            conn.set_option(ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3)
            conn.set_option(ldap.OPT_REFERRALS, 0)
            conn.set_option(ldap.OPT_NETWORK_TIMEOUT, LDAP_TIMEOUT)
            conn.set_option(ldap.OPT_TIMEOUT, LDAP_TIMEOUT)
            if as_root:
                conn.simple_bind_s(self.root_dn, self.root_password)
            else:
                conn.simple_bind_s(self.service_dn, self.service_password)
        except BaseException:
            conn.unbind_s()
            raise
        return conn

    def add_user(self, uid: str, *, cn: str | None = None, mail: str | None = None) -> str:
        """Add an inetOrgPerson ``uid=<uid>,ou=people,<suffix>`` (as root); return its DN.

        ``uid`` may be any NUL-free text: the RDN is escaped per RFC 4514. ``cn`` defaults
        to ``uid``; ``sn`` is the last word of ``cn``.
        """
        dn = child_dn("uid", uid, self.people_base)
        common = cn if cn is not None else uid
        surname = common.split()[-1] if common.split() else common
        entry = [
            ("objectClass", [b"inetOrgPerson"]),
            ("uid", [uid.encode()]),
            ("cn", [common.encode()]),
            ("sn", [surname.encode()]),
        ]
        if mail is not None:
            entry.append(("mail", [mail.encode()]))
        self._add(dn, entry)
        return dn

    def add_group(self, cn: str, *, members: list[str], object_class: str = "groupOfNames") -> str:
        """Add ``cn=<cn>,ou=groups,<suffix>`` (as root) with these member DNs; return its DN.

        Args:
            cn: the group's name (escaped per RFC 4514 in the DN).
            members: member DNs, at least one (both object classes require a member).
            object_class: ``groupOfNames`` (``member``) or ``groupOfUniqueNames``
                (``uniqueMember``).

        Raises:
            ValueError: no members, or another object class.
        """
        attribute = GROUP_MEMBER_ATTRIBUTE.get(object_class)
        if attribute is None:
            raise ValueError(f"object_class must be one of {sorted(GROUP_MEMBER_ATTRIBUTE)}")
        if not members:
            raise ValueError(f"{object_class} needs at least one member")
        dn = child_dn("cn", cn, self.groups_base)
        self._add(
            dn,
            [
                ("objectClass", [object_class.encode()]),
                ("cn", [cn.encode()]),
                (attribute, [member.encode() for member in members]),
            ],
        )
        return dn

    def _add(self, dn: str, entry: list[tuple[str, list[bytes]]]) -> None:
        conn = self.connect()
        try:
            conn.add_s(dn, entry)
        finally:
            conn.unbind_s()

    def members(self, group_dn: str) -> set[str]:
        """The group's ``member`` and ``uniqueMember`` values, as stored (read as root).

        slapd re-escapes DN values its own way (``a\\,b`` is stored as ``a\\2Cb``): compare them
        parsed (``ldap.dn.str2dn``), not as strings.
        """
        return self._read(group_dn, ("member", "uniqueMember"))

    def member_of(self, user_dn: str) -> set[str]:
        """The user's ``memberOf`` values (operational, kept by the memberof overlay).

        The overlay runs with its defaults: only ``groupOfNames`` / ``member`` is reflected,
        not ``groupOfUniqueNames``.
        """
        return self._read(user_dn, ("memberOf",))

    def _read(self, dn: str, attributes: tuple[str, ...]) -> set[str]:
        conn = self.connect()
        try:
            found = conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", list(attributes))
        finally:
            conn.unbind_s()
        values: set[str] = set()
        for _, entry in found:
            for attribute, raw in entry.items():
                if attribute.lower() in {a.lower() for a in attributes}:
                    values.update(value.decode() for value in raw)
        return values


EXAMPLE_DIRECTORY_USERS = (
    "alice",
    "bob",
    "carol",
    "dave",
    "mallory",
    "sam",
    "svc-backup",
    EMERGENCY_UID,
)
"""Users of ``examples/keyturn.yaml``, the service account the example groups allowlist, and the
emergency account whose password a break-glass kit seals (Keyturn's bind may set it)."""


def example_directory(workdir: Path) -> Slapd:
    """Start slapd on a fresh ``workdir`` seeded for ``examples/keyturn.yaml``; the caller stops it.

    Users (inetOrgPerson under ``ou=people``): alice, bob, carol, dave, mallory, sam, svc-backup.
    Groups under ``ou=groups``: ``db-admins`` (groupOfNames, member svc-backup) and
    ``app-deployers`` (groupOfUniqueNames, uniqueMember svc-backup); both need one member.
    """
    slapd = Slapd(workdir).start()
    try:
        dns = {u: slapd.add_user(u, mail=f"{u}@example.org") for u in EXAMPLE_DIRECTORY_USERS}
        slapd.add_group("db-admins", members=[dns["svc-backup"]])
        slapd.add_group(
            "app-deployers", members=[dns["svc-backup"]], object_class="groupOfUniqueNames"
        )
    except BaseException:
        slapd.stop()
        raise
    return slapd


ALERTMANAGER_CANDIDATES = ("/usr/bin/prometheus-alertmanager", "/usr/local/bin/alertmanager")
ALERTMANAGER_ROUTE_TIMINGS = {"group_wait": "0s", "group_interval": "1s", "repeat_interval": "24h"}
"""Fast notifications: a new alert is sent at once, a resolve within ~1 s, no repeats in a test."""
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
ALERTMANAGER_HTTP_TIMEOUT = 5.0  # seconds, for calls to its API


def alertmanager_binary() -> str:
    """Path of Prometheus Alertmanager. Raises FileNotFoundError with the install hint."""
    return find_binary(
        ALERTMANAGER_CANDIDATES,
        ("prometheus-alertmanager", "alertmanager"),
        "prometheus-alertmanager",
    )


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("alert times must be aware datetimes")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Alertmanager:
    """A throwaway Prometheus Alertmanager (0.25) whose one route sends every alert to a webhook.

    Runs in the foreground with clustering off (``--cluster.listen-address=`` empty, so no gossip
    port on 0.0.0.0:9094), its API on ``127.0.0.1:<port>``, storage in ``workdir/data``. The
    route groups by all labels (``group_by: ['...']``: one notification per alert) with
    :data:`ALERTMANAGER_ROUTE_TIMINGS`, and the receiver has ``send_resolved: true``. The sender
    credentials go into ``http_config`` exactly as an operator would write them.

    Args:
        workdir: a private directory for ``alertmanager.yml`` (0600), ``alertmanager.log`` and data.
        webhook_url: where notifications go; must be ``http(s)://`` on a loopback host.
        bearer_token: sent as ``Authorization: Bearer <token>`` (``http_config.authorization``).
        basic: ``(username, password)`` sent as HTTP basic auth (``http_config.basic_auth``).
        port: the loopback port of its API and UI.

    Raises:
        ValueError: a webhook URL off loopback, or both kinds of credentials.
    """

    workdir: Path
    webhook_url: str
    bearer_token: str | None = None
    basic: tuple[str, str] | None = None
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        parts = urlsplit(self.webhook_url)
        if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK_HOSTS:
            raise ValueError(f"the lab only sends to loopback: {self.webhook_url!r}")
        if self.bearer_token is not None and self.basic is not None:
            raise ValueError("give a bearer token or basic credentials, not both")
        self._daemon = Daemon("alertmanager", self.workdir / "alertmanager.log")

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: its API (``/api/v2``) and UI."""
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, object]:
        """The ``alertmanager.yml`` content (written as JSON, which YAML reads as is)."""
        webhook: dict[str, object] = {
            "url": self.webhook_url,
            "send_resolved": True,
            "max_alerts": 0,
        }
        if self.bearer_token is not None:
            webhook["http_config"] = {
                "authorization": {"type": "Bearer", "credentials": self.bearer_token}
            }
        elif self.basic is not None:
            username, password = self.basic
            webhook["http_config"] = {"basic_auth": {"username": username, "password": password}}
        return {
            "route": {"receiver": "keyturn", "group_by": ["..."], **ALERTMANAGER_ROUTE_TIMINGS},
            "receivers": [{"name": "keyturn", "webhook_configs": [webhook]}],
        }

    def start(self, timeout: float = 15.0) -> Alertmanager:
        """Write the config and start Alertmanager; return once ``GET /-/ready`` answers 200.

        Raises:
            RuntimeError: it exited (e.g. a config error, in the log tail) or was not ready in
                ``timeout`` seconds.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "alertmanager.yml"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(self.config(), out, indent=2)
        argv = [
            alertmanager_binary(),
            f"--config.file={config}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--web.external-url={self.url}",
            "--cluster.listen-address=",
        ]
        self._daemon.start(argv, self._ready, timeout)
        return self

    def _client(self) -> httpx.Client:
        # trust_env=False: no proxy from the environment; this traffic stays on loopback.
        return httpx.Client(base_url=self.url, trust_env=False, timeout=ALERTMANAGER_HTTP_TIMEOUT)

    def _ready(self) -> bool:
        try:
            with self._client() as client:
                return client.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def post_alert(
        self,
        labels: dict[str, str],
        annotations: dict[str, str] | None = None,
        starts_at: datetime | None = None,
        ends_at: datetime | None = None,
    ) -> None:
        """Post one alert (``POST /api/v2/alerts``), as Prometheus does.

        Without ``starts_at`` Alertmanager uses its receive time; without ``ends_at`` the alert
        fires until ``resolve_timeout`` (5 min) passes without an update. An ``ends_at`` that
        is not after Alertmanager's clock resolves it. Times must be aware.

        Raises:
            RuntimeError: Alertmanager refused the alert (with its answer).
            httpx.HTTPError: it could not be reached.
        """
        alert: dict[str, object] = {"labels": labels, "annotations": annotations or {}}
        if starts_at is not None:
            alert["startsAt"] = _rfc3339(starts_at)
        if ends_at is not None:
            alert["endsAt"] = _rfc3339(ends_at)
        with self._client() as client:
            response = client.post("/api/v2/alerts", json=[alert])
        if response.status_code != 200:
            raise RuntimeError(
                f"Alertmanager refused the alert: {response.status_code} {response.text[:500]}"
            )

    def resolve_alert(
        self,
        labels: dict[str, str],
        *,
        annotations: dict[str, str] | None = None,
        starts_at: datetime | None = None,
        ends_at: datetime | None = None,
    ) -> None:
        """Post the alert with ``labels`` again with an end, so it resolves.

        Args:
            labels: exactly the labels it was posted with (they make its identity).
            annotations: its annotations (the resolved notification shows these).
            starts_at: the start it was posted with, if any.
            ends_at: aware end time, not after Alertmanager's clock; default: now.
        """
        # The lab's one clock read: Alertmanager compares endsAt with its own real clock, so a
        # resolve without a caller-given end has to be "now" in real time.
        end = ends_at if ends_at is not None else datetime.now(UTC)
        self.post_alert(labels, annotations, starts_at=starts_at, ends_at=end)

    def log_text(self) -> str:
        """What Alertmanager logged so far (all runs on this workdir)."""
        return self._daemon.log_text()

    def stop(self) -> None:
        """Stop Alertmanager (SIGTERM, SIGKILL after 5 s) and wait for it; safe to call twice."""
        self._daemon.stop()
