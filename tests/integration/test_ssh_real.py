"""Real OpenSSH: Keyturn certificates are accepted in the window and refused everywhere else."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from keyturn import bootstrap
from keyturn.adapters.providers.ssh_ca import public_key_path
from keyturn.bootstrap import App
from keyturn.entrypoints.cli import cert_path_for
from keyturn.lab import Sshd, make_user_key, ssh_login
from keyturn.service import access, grants
from keyturn.service.access import RequestInput
from tests.conftest import example_data, load

pytestmark = pytest.mark.integration


@dataclass
class Lab:
    app: App
    db1: Sshd
    db2: Sshd
    key: Path

    def request(self, who: str, role: str, seconds: int) -> access.RequestView:
        user = self.app.deps.config.user(who)
        assert user is not None
        data = RequestInput(
            role,
            "db-1",
            timedelta(seconds=seconds),
            "db-1 down",
            None,
            self.key.with_name("id_ed25519.pub").read_text(),
        )
        view = access.request_access(self.app.deps, user, data)
        assert view.grant is not None
        cert_path_for(self.key.with_name("id_ed25519.pub")).write_text(
            view.grant.credentials["ssh_certificate"] + "\n"
        )
        return view

    def login(self, sshd: Sshd) -> bool:
        cert = cert_path_for(self.key.with_name("id_ed25519.pub"))
        return ssh_login(sshd, self.key, cert).returncode == 0


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    app = bootstrap.build(load(example_data(tmp_path)))
    ca_pub = public_key_path(app.deps.config.ssh_ca.key_path)
    db1 = Sshd(tmp_path / "db-1", ca_pub, app.ssh.krl_path, ["server-admin@db-1"]).start()
    db2 = Sshd(tmp_path / "db-2", ca_pub, app.ssh.krl_path, ["server-admin@db-2"]).start()
    make_user_key(tmp_path / "alice" / "id_ed25519", "alice@laptop")
    yield Lab(app, db1, db2, tmp_path / "alice" / "id_ed25519")
    db1.stop()
    db2.stop()
    app.close()


def test_certificate_is_accepted_in_its_window_and_names_the_grant(lab: Lab) -> None:
    """A real ssh login works; sshd logs the key id with grant, request and user (correlation)."""
    view = lab.request("alice", "server-admin", 300)
    assert lab.login(lab.db1)
    assert view.grant is not None
    log = lab.db1.log_text()
    assert f"grant={view.grant.id}" in log
    assert "user=alice" in log


def test_certificate_for_db1_is_refused_by_db2(lab: Lab) -> None:
    """Principals are scoped to the target: a db-1 grant does not open db-2."""
    lab.request("alice", "server-admin", 300)
    assert not lab.login(lab.db2)


def test_certificate_is_refused_after_valid_before(lab: Lab) -> None:
    """After not_after, sshd itself refuses the certificate (expiry baked in)."""
    view = lab.request("alice", "server-admin", 3)
    assert lab.login(lab.db1)
    assert view.grant is not None
    remaining = (view.grant.not_after - lab.app.deps.clock.now()).total_seconds()
    time.sleep(max(0.0, remaining) + 1.2)
    assert not lab.login(lab.db1)


def test_early_revoke_is_refused_at_once_through_the_krl(lab: Lab) -> None:
    """An admin revoke puts the serial on the KRL; the next login is refused, no restart."""
    view = lab.request("alice", "server-admin", 300)
    assert lab.login(lab.db1)
    sam = lab.app.deps.config.user("sam")
    assert sam is not None
    assert view.grant is not None
    ended = grants.revoke(lab.app.deps, sam, view.grant.id)
    assert ended.status.value == "revoked"
    assert not lab.login(lab.db1)
    assert "revoked" in lab.db1.log_text().lower()


def test_expired_grant_needs_no_krl_entry(lab: Lab) -> None:
    """Expiry is verified without touching the KRL: only early ends are listed."""
    view = lab.request("alice", "server-admin", 1)
    time.sleep(1.1)
    [ended] = grants.expire_due(lab.app.deps)
    assert view.grant is not None
    assert ended.id == view.grant.id
    assert ended.status.value == "revoked"
    assert lab.app.ssh.read_krl_ranges() == []
