"""A recording gateway in front of two real sshd targets, for the gateway tests and benchmarks.

Keyturn's CA and KRL, two throwaway sshd (db-1, db-2) trusting it with their host keys in the
configuration, the gateway on its own event loop, and alice's key pair. ``ssh`` runs the real
OpenSSH client through the gateway.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from keyturn import bootstrap
from keyturn.adapters.providers.ssh_ca import load_or_create_ca, public_key_path
from keyturn.bootstrap import App
from keyturn.entrypoints.cli import cert_path_for
from keyturn.entrypoints.gateway import GatewayThread
from keyturn.lab import SSH_CLIENT_OPTIONS, Sshd, free_port, make_user_key, ssh_client_args
from keyturn.service import access
from keyturn.service.access import RequestInput
from tests.conftest import example_data, load

#: the client options the benchmark uses too (host keys checked)
SSH_OPTIONS = (*SSH_CLIENT_OPTIONS, "-o", "StrictHostKeyChecking=yes")


@dataclass
class GatewayLab:
    app: App
    gateway: GatewayThread
    db1: Sshd
    db2: Sshd
    key: Path
    known_hosts: Path
    recordings: Path

    @property
    def port(self) -> int:
        return self.gateway.port

    @property
    def cert(self) -> Path:
        return cert_path_for(self.key.with_name(self.key.name + ".pub"))

    def grant(
        self,
        who: str = "alice",
        role: str = "server-admin",
        target: str = "db-1",
        seconds: int = 600,
    ) -> access.RequestView:
        """An auto-approved SSH grant; its certificate is written next to the key."""
        user = self.app.deps.config.user(who)
        assert user is not None
        data = RequestInput(
            role,
            target,
            timedelta(seconds=seconds),
            f"INC-7 {target} is down",
            None,
            self.key.with_name(self.key.name + ".pub").read_text(),
        )
        view = access.request_access(self.app.deps, user, data)
        assert view.grant is not None, view
        self.cert.write_text(view.grant.credentials["ssh_certificate"] + "\n")
        return view

    def ssh_args(self, target: str, *extra: str, cert: Path | None = None) -> list[str]:
        """``ssh`` through the gateway as ``target@127.0.0.1`` with alice's key."""
        return ssh_client_args(
            self.key,
            cert or self.cert,
            port=self.port,
            destination=f"{target}@127.0.0.1",
            known_hosts=self.known_hosts,
            extra=extra,
        )

    def ssh(
        self,
        target: str,
        command: str | None,
        *extra: str,
        timeout: float = 30,
        cert: Path | None = None,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        args = self.ssh_args(target, *extra, cert=cert) + ([command] if command else [])
        return subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, check=False, input=stdin
        )

    def events(self, action: str) -> list[Any]:
        with self.app.store.transaction() as tx:
            return [e for e in tx.iter_audit() if e.action == action]


@contextmanager
def gateway_lab(
    tmp_path: Path, change: Callable[[dict[str, Any]], None] | None = None
) -> Iterator[GatewayLab]:
    """Start everything; stop it all on exit."""
    ca_path = tmp_path / "ca" / "user_ca"
    load_or_create_ca(ca_path)
    krl = tmp_path / "ca" / "revoked.krl"
    db1 = Sshd(tmp_path / "db-1", public_key_path(ca_path), krl, ["server-admin@db-1"])
    db2 = Sshd(tmp_path / "db-2", public_key_path(ca_path), krl, ["server-admin@db-2"])
    data = example_data(tmp_path)
    data["ssh_ca"] = {"key_path": str(ca_path), "krl_path": str(krl)}
    recordings = tmp_path / "recordings"
    data["gateway"] = {
        "port": free_port(),
        "host_key_path": str(tmp_path / "gateway" / "host_key"),
        "recordings_dir": str(recordings),
        "grant_check_interval": "PT0.2S",
    }
    for sshd in (db1, db2):
        sshd.workdir.mkdir(parents=True)
        make_user_key(sshd.workdir / "host_ed25519", "keyturn-lab-host")
    by_name = {"db-1": db1, "db-2": db2}
    for target in data["targets"]:
        sshd = by_name.get(target["name"])
        if sshd is not None:
            target["port"] = sshd.port
            target["login"] = sshd.login
            target["host_key"] = (sshd.workdir / "host_ed25519.pub").read_text().strip()
    if change is not None:
        change(data)
    app = bootstrap.build(load(data))
    db1.start()
    db2.start()
    gateway = GatewayThread(app).start()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{gateway.port} {gateway.gateway.host_key_line}\n")
    key = tmp_path / "alice" / "id_ed25519"
    make_user_key(key, "alice@laptop")
    try:
        yield GatewayLab(app, gateway, db1, db2, key, known_hosts, recordings)
    finally:
        gateway.stop()
        db1.stop()
        db2.stop()
        app.close()
