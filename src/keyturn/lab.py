"""Throwaway real OpenSSH servers and client calls, for ``keyturn demo`` and the tests.

An sshd runs in the foreground (``sshd -D -e -f CONFIG``) on a free loopback port, trusting the
Keyturn CA (``TrustedUserCAKeys``), mapping logins to principals (``AuthorizedPrincipalsFile``)
and reading the KRL on every login (``RevokedKeys``). It runs as the current user and accepts
logins only as that user. Nothing here talks beyond 127.0.0.1.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound and released; good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sshd_binary() -> str:
    """Path of sshd. Raises FileNotFoundError with the install hint."""
    for candidate in SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("sshd")
    if found:
        return found
    raise FileNotFoundError("sshd not found: apt-get install openssh-server")


def make_user_key(path: Path, comment: str) -> Path:
    """Create an Ed25519 key pair at ``path`` (private, 0600) and ``path.pub``; return the .pub."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_name(path.name + ".pub")


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
    process: subprocess.Popen[bytes] | None = None

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
                    "",
                ]
            )
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self._log = (self.workdir / "sshd.log").open("wb")
        self.process = subprocess.Popen(
            [sshd_binary(), "-D", "-e", "-f", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"sshd exited at start:\n{self.log_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    if sock.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"sshd did not start within {timeout}s:\n{self.log_text()[-2000:]}")

    def log_text(self) -> str:
        """What sshd logged so far."""
        path = self.workdir / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop sshd and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()


def ssh_login(
    sshd: Sshd, private_key: Path, certificate: Path, command: str = "true", timeout: float = 15
) -> subprocess.CompletedProcess[str]:
    """Run ``ssh`` with exactly this key and certificate against ``sshd``; never prompts."""
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(private_key),
            "-o",
            f"CertificateFile={certificate}",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            "-p",
            str(sshd.port),
            f"{sshd.login}@127.0.0.1",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
