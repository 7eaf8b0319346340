"""Offline break-glass with real components: the paper kit signs a certificate a real sshd
accepts while Keyturn (server and database) is gone, the record imports once Keyturn is back,
rotation drops the old kit from the served CA lines, and the sealed directory password changes
in a real slapd.

The ``keyturn`` command runs as a subprocess, so the shares travel on standard input exactly as
custodians would type them (one per line, end of input ends them). The Keyturn server runs
in-process on a loopback port when it is "up"; "down" means stopped, with its database file
moved away.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import ldap
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from shamir_mnemonic.wordlist import WORDLIST

from keyturn import bootstrap
from keyturn.adapters.providers.ldap_group import build_ldap_provider
from keyturn.adapters.providers.ssh_ca import public_key_path
from keyturn.bootstrap import App
from keyturn.config import load_config
from keyturn.entrypoints.cli import cert_path_for
from keyturn.entrypoints.server import Server
from keyturn.lab import Slapd, Sshd, free_port, make_user_key, ssh_login
from keyturn.policy_cases import load_checked
from tests.conftest import LDAP_PASSWORD_ENV, TOKENS, example_data

pytestmark = pytest.mark.integration

KEYTURN = str(Path(sys.executable).parent / "keyturn")
CLI_TIMEOUT = 60.0  # seconds: the longest one keyturn command may take
JUSTIFICATION = "db-1 is down and Keyturn with it (INC-4711)"
PRINCIPAL = "db-admin@db-1"  # db-admin's template "{role}@{target}" for db-1
SKEW = timedelta(seconds=30)  # the example's ssh_ca.clock_skew
EXIT_BAD_INPUT, EXIT_CONFLICT = 2, 6


def words(text: str) -> str:
    """``text`` with every run of blanks made one space (Rich wraps long stderr lines)."""
    return " ".join(text.split())


def parse_time(value: str) -> datetime:
    """An ISO time with a ``Z`` suffix."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- one Keyturn installation -------------------------------------------------------------------
@dataclass
class Installation:
    """A Keyturn host in its own directory: configuration, SQLite store, CA key and kit file.

    :meth:`start` runs the API server (and worker) in-process; :meth:`run` runs the ``keyturn``
    command as a subprocess with this configuration's environment.
    """

    root: Path
    env: dict[str, str]
    server: Server | None = None
    app: App | None = None
    port: int = field(default_factory=free_port)

    @property
    def config(self) -> Path:
        return self.root / "keyturn.yaml"

    @property
    def db(self) -> Path:
        return self.root / "keyturn.db"  # example_data: sqlite:///<root>/keyturn.db

    @property
    def kit_file(self) -> Path:
        return self.root / "kit" / "break-glass-kit.json"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # the keyturn command
    def run(
        self, *args: str, stdin: str = "", user: str | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``keyturn ARGS`` (as ``user`` against the running server when given)."""
        auth = ["--url", self.url, "--token", TOKENS[user]] if user is not None else []
        return subprocess.run(
            [KEYTURN, *auth, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=cwd or self.root,
            timeout=CLI_TIMEOUT,
            check=False,
        )

    def kit(self, command: str, *options: str) -> dict[str, Any]:
        """``keyturn -o json break-glass kit create|rotate -c CONFIG …``: the printed JSON."""
        done = self.run(
            "-o", "json", "break-glass", "kit", command, "-c", str(self.config), *options
        )
        assert done.returncode == 0, done.stderr
        data: dict[str, Any] = json.loads(done.stdout)
        return data

    def offline(
        self,
        shares: list[str],
        public_key: Path,
        *,
        duration: str,
        cwd: Path,
        kit: Path | None = None,
        with_kit: bool = True,
        reveal: bool = False,
        out: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``keyturn -o json break-glass offline …`` with ``shares`` on stdin, one per line."""
        args = [
            "-o",
            "json",
            "break-glass",
            "offline",
            "-c",
            str(self.config),
            "--role",
            "db-admin",
            "--target",
            "db-1",
            "--ssh-key",
            str(public_key),
            "-j",
            JUSTIFICATION,
            "--name",
            "alice",
            "--for",
            duration,
        ]
        if with_kit:
            args += ["--kit", str(kit or self.kit_file)]
        if reveal:
            args.append("--reveal-directory-password")
        if out is not None:
            args += ["--out", str(out)]
        return self.run(*args, stdin="".join(s + "\n" for s in shares), cwd=cwd)

    # the server
    def start(self) -> None:
        """Run the API and the worker in-process on a fresh loopback port."""
        assert self.server is None
        self.port = free_port()
        self.app = bootstrap.build(load_checked(self.config))
        self.server = Server(self.app, "127.0.0.1", self.port)
        self.server.start()

    def stop(self) -> None:
        """Stop the server and close the app (its store connections); safe to call twice."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.app is not None:
            self.app.close()
            self.app = None

    def get(self, user: str | None, path: str, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKENS[user]}"} if user is not None else {}
        with httpx.Client(base_url=self.url, trust_env=False, timeout=10) as client:
            return client.get(path, headers=headers, params=params)

    def ca_lines(self) -> list[str]:
        """``GET /v1/ssh/ca``: the lines a target puts in ``TrustedUserCAKeys``."""
        response = self.get("sam", "/v1/ssh/ca")
        assert response.status_code == 200, response.text
        return response.text.splitlines()

    def krl(self) -> bytes:
        """``GET /v1/ssh/krl``: the KRL a target puts in ``RevokedKeys``."""
        response = self.get("sam", "/v1/ssh/krl")
        assert response.status_code == 200, response.text
        return response.content

    def audit(self, action: str | None = None) -> list[dict[str, Any]]:
        """Every audit event (seen by the admin sam), or those of one action."""
        response = self.get("sam", "/v1/audit", limit=10_000)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return [e for e in items if action is None or e["action"] == action]

    def kit_state(self) -> dict[str, Any]:
        """``/readyz`` ``details.break_glass``."""
        response = self.get(None, "/readyz")
        assert response.status_code == 200, response.text
        state: dict[str, Any] = response.json()["details"]["break_glass"]
        return state

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of ``/metrics`` (None when absent)."""
        response = self.get(None, "/metrics")
        assert response.status_code == 200, response.text
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return None


def installation(
    root: Path, *, ldap_url: str | None = None, env: dict[str, str] | None = None, **settings: Any
) -> Installation:
    """The example configuration in ``root``: its own store, CA key, kit file; ``settings`` go
    into the ``break_glass`` section."""
    root.mkdir(parents=True, exist_ok=True)
    data = example_data(root, ldap_url=ldap_url)
    data["break_glass"]["kit_path"] = str(root / "kit" / "break-glass-kit.json")
    data["break_glass"].update(settings)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    environ |= {"HOME": str(root / "home"), "COLUMNS": "200", **(env or {})}
    site = Installation(root, environ)
    site.config.write_text(yaml.safe_dump(data))
    return site


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Servers to stop at teardown (in reverse order of start)."""
    with ExitStack() as cleanup:
        yield cleanup


def target(workdir: Path, ca_lines: list[str], krl: bytes) -> Sshd:
    """A real sshd for db-1 configured from what Keyturn serves: the CA lines and the KRL, copied
    into the target's own files (as a target would keep them while Keyturn is down)."""
    workdir.mkdir(parents=True)
    trusted, revoked = workdir / "trusted_user_ca_keys", workdir / "revoked_keys"
    trusted.write_text("".join(line + "\n" for line in ca_lines))
    revoked.write_bytes(krl)
    return Sshd(workdir, trusted, revoked, [PRINCIPAL]).start()


def certificate_facts(cert: Path) -> dict[str, Any]:
    """``ssh-keygen -L -f CERT``: key id, serial, principals, validity window (naive UTC)."""
    done = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(cert)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TZ": "UTC"},
    )
    lines = [line.strip() for line in done.stdout.splitlines()]
    facts: dict[str, Any] = {"principals": []}
    for i, line in enumerate(lines):
        if line.startswith("Key ID:"):
            facts["key_id"] = line.removeprefix("Key ID:").strip().strip('"')
        elif line.startswith("Serial:"):
            facts["serial"] = line.removeprefix("Serial:").strip()
        elif line.startswith("Signing CA:"):
            facts["signing_ca"] = line.split()[3]  # "Signing CA: ED25519 SHA256:… (using …)"
        elif line.startswith("Valid: from"):
            _, _, start, _, end = line.split()
            facts["valid"] = (datetime.fromisoformat(start), datetime.fromisoformat(end))
        elif line == "Principals:":
            for follow in lines[i + 1 :]:
                if ":" in follow:  # the next heading ("Critical Options: …")
                    break
                facts["principals"].append(follow)
    return facts


def binds(slapd: Slapd, dn: str, password: str) -> bool:
    """Does a simple bind as ``dn`` with ``password`` succeed against the real slapd?"""
    conn = ldap.initialize(slapd.url)
    try:
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, 5.0)
        conn.simple_bind_s(dn, password)
    except ldap.INVALID_CREDENTIALS:
        return False
    finally:
        conn.unbind_s()
    return True


def mistyped(share: str, position: int = 10) -> str:
    """``share`` with the word at ``position`` replaced by another real SLIP-39 word."""
    parts = share.split()
    index = WORDLIST.index(parts[position])
    parts[position] = WORDLIST[(index + 1) % len(WORDLIST)]
    return " ".join(parts)


# --- a) b) d): the kit, an outage, the certificate, the record and its import -------------------
def test_kit_signs_while_keyturn_is_down_and_the_record_imports_once_it_is_back(
    tmp_path: Path, stack: ExitStack
) -> None:
    """2 of 5 shares sign, with server and database gone, a certificate a real sshd accepts (and
    refuses after its end); its record imports once, opens the review and spends the kit."""
    site = installation(tmp_path / "keyturn")
    stack.callback(site.stop)
    created = site.kit("create", "--shares", "5", "--threshold", "2")
    kit = created["kit"]
    shares: list[str] = created["shares"]
    assert len(set(shares)) == 5
    assert (kit["threshold"], kit["shares"]) == (2, 5)
    assert json.loads(site.kit_file.read_text()) == kit
    assert not any(share in site.kit_file.read_text() for share in shares)

    site.start()
    ca_lines = site.ca_lines()
    keyturn_ca = public_key_path(tmp_path / "keyturn" / "ca" / "user_ca").read_text().strip()
    assert ca_lines == [keyturn_ca, kit["public_key"]]
    assert ca_lines[1].endswith(f" keyturn-break-glass:{kit['kit_id']}")
    assert site.kit_state()["state"] == "ready"
    db1 = target(tmp_path / "db-1", ca_lines, site.krl())
    stack.callback(db1.stop)

    # Keyturn goes down: the server stops and its database is gone.
    down_url = site.url
    site.stop()
    away = tmp_path / "keyturn.db.away"
    site.db.rename(away)
    with pytest.raises(httpx.ConnectError):
        httpx.get(down_url + "/healthz", trust_env=False, timeout=2)

    laptop = tmp_path / "laptop"
    public_key = make_user_key(laptop / "id_ed25519", "alice@laptop")
    done = site.offline([shares[3], shares[1]], public_key, duration="5s", cwd=laptop)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert not site.db.exists(), "offline break-glass touched the store"
    assert "share accepted (2 of 2)" in done.stderr

    cert = cert_path_for(public_key)
    assert Path(out["certificate_path"]) == cert
    assert ssh_login(db1, laptop / "id_ed25519", cert).returncode == 0

    facts = certificate_facts(cert)
    assert facts["key_id"] == f"break-glass:{out['record_id']}:alice" == out["key_id"]
    assert facts["principals"] == [PRINCIPAL]
    assert facts["serial"] == out["serial"]
    assert facts["signing_ca"] == kit["fingerprint"]
    valid_after, valid_before = facts["valid"]
    assert valid_before - valid_after == timedelta(seconds=5) + SKEW  # skew backdates the start

    record_path = laptop / out["record_path"]
    document = json.loads(record_path.read_text())
    record = document["record"]
    assert record["id"] == out["record_id"]
    assert record["kit_id"] == kit["kit_id"]
    assert (record["name"], record["role"], record["target"]) == ("alice", "db-admin", "db-1")
    assert record["justification"] == JUSTIFICATION
    assert record["serial"] == out["serial"]
    assert record["key_id"] == out["key_id"]
    assert record["principals"] == [PRINCIPAL]
    signed_at, not_after = parse_time(record["signed_at"]), parse_time(record["not_after"])
    assert not_after - signed_at == timedelta(seconds=5)  # the skew never extends the end
    assert signed_at - parse_time(record["not_before"]) == SKEW
    assert valid_before.replace(tzinfo=UTC) == not_after

    # Keyturn is back. A record changed by one byte of the justification is refused first.
    away.rename(site.db)
    site.start()
    events_before = site.audit()
    tampered = laptop / "tampered.json"
    raw = record_path.read_bytes()
    at = raw.index(b"INC-4711") + len("INC-471")
    tampered.write_bytes(raw[:at] + b"2" + raw[at + 1 :])
    assert len(tampered.read_bytes()) == len(raw)
    refused = site.run("audit", "import", str(tampered), user="sam")
    assert refused.returncode == EXIT_BAD_INPUT, (refused.stdout, refused.stderr)
    assert "signature does not verify" in words(refused.stderr)
    assert site.audit() == events_before
    assert site.kit_state()["state"] == "ready"
    listed = site.run("-o", "json", "reviews", "--all", user="sam")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["items"] == []

    imported = site.run("-o", "json", "audit", "import", str(record_path), user="sam")
    assert imported.returncode == 0, imported.stderr
    review = json.loads(imported.stdout)
    assert review["mode"] == "offline"
    assert (review["record_id"], review["kit_id"]) == (record["id"], kit["kit_id"])
    assert (review["user"], review["role"], review["target"]) == ("alice", "db-admin", "db-1")
    assert review["status"] == "open"

    listed = site.run("-o", "json", "reviews", user="sam")
    assert listed.returncode == 0, listed.stderr
    [shown] = json.loads(listed.stdout)["items"]
    assert (shown["id"], shown["mode"], shown["record_id"]) == (
        review["id"],
        "offline",
        record["id"],
    )
    verified = site.run("-o", "json", "audit", "verify", user="sam")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["ok"] is True

    [event] = site.audit("break_glass.imported")
    assert event["actor"] == "sam"
    assert event["details"]["record"] == record
    assert event["details"]["signature"] == document["signature"]
    state = site.kit_state()
    assert (state["state"], state["kit_id"]) == ("spent", kit["kit_id"])
    assert site.metric("keyturn_break_glass_kit_spent") == 1
    assert site.metric("keyturn_break_glass_kit_ready") == 0
    assert site.metric("keyturn_break_glass_uses_total", role="db-admin", mode="offline") == 1

    # The same record again: a conflict, and no second event or review.
    events_before = site.audit()
    replayed = site.run("audit", "import", str(record_path), user="sam")
    assert replayed.returncode == EXIT_CONFLICT, (replayed.stdout, replayed.stderr)
    assert "imported already" in words(replayed.stderr)
    assert site.audit() == events_before
    assert len(site.audit("break_glass.imported")) == 1
    listed = site.run("-o", "json", "reviews", "--all", user="sam")
    assert [r["id"] for r in json.loads(listed.stdout)["items"]] == [review["id"]]
    assert site.metric("keyturn_break_glass_uses_total", role="db-admin", mode="offline") == 1

    # After its end, sshd itself refuses the certificate (real time: sshd reads the real clock).
    time.sleep(max(0.0, (not_after - datetime.now(UTC)).total_seconds()) + 1.2)
    assert ssh_login(db1, laptop / "id_ed25519", cert).returncode != 0
    assert "expired" in db1.log_text().lower()


# --- c): refusals sign nothing -----------------------------------------------------------------
@dataclass(frozen=True)
class Kits:
    """A kit of a Keyturn that is down (database moved away), and another Keyturn's kit."""

    site: Installation
    shares: list[str]
    other_shares: list[str]


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Kits:
    site = installation(tmp_path_factory.mktemp("keyturn"))
    shares = site.kit("create", "--shares", "5", "--threshold", "2")["shares"]
    other = installation(tmp_path_factory.mktemp("other-keyturn"))
    other_shares = other.kit("create", "--shares", "5", "--threshold", "2")["shares"]
    site.db.rename(site.db.with_name("keyturn.db.away"))
    return Kits(site, shares, other_shares)


REFUSALS: dict[str, tuple[Any, bool, list[str]]] = {
    # case: (shares given, with --kit, what stderr says)
    "one share": (lambda k: [k.shares[0]], True, ["only 1 of the 2 shares"]),
    "the same share twice": (
        lambda k: [k.shares[2], k.shares[2]],
        True,
        ["already given; it counts once", "only 1 of the 2 shares"],
    ),
    "the same share twice, retyped in capitals with extra blanks": (
        lambda k: [k.shares[2], "  " + k.shares[2].upper().replace(" ", "   ")],
        True,
        ["already given; it counts once", "only 1 of the 2 shares"],
    ),
    "another kit's share, then a valid one": (
        lambda k: [k.other_shares[0], k.shares[1]],
        True,
        ["belongs to another kit", "only 1 of the 2 shares"],
    ),
    "a valid share, then another kit's": (
        lambda k: [k.shares[1], k.other_shares[0]],
        True,
        ["belongs to another kit", "only 1 of the 2 shares"],
    ),
    "a valid share, then another kit's, without the kit file": (
        lambda k: [k.shares[1], k.other_shares[0]],
        False,
        ["belongs to another kit", "only 1 of the 2 shares"],
    ),
    "a share with one word changed": (
        lambda k: [mistyped(k.shares[0]), k.shares[1]],
        True,
        ["a word is mistyped", "only 1 of the 2 shares"],
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_shares_sign_nothing(kits: Kits, case: str, tmp_path: Path) -> None:
    """Too few shares, a repeated share, a share of another kit or a mistyped word: exit 2, a
    clear reason, and no certificate and no record written."""
    pick, with_kit, messages = REFUSALS[case]
    public_key = make_user_key(tmp_path / "id_ed25519", "alice@laptop")
    before = sorted(p.name for p in tmp_path.iterdir())
    done = kits.site.offline(pick(kits), public_key, duration="5m", cwd=tmp_path, with_kit=with_kit)
    assert done.returncode == EXIT_BAD_INPUT, (done.stdout, done.stderr)
    said = words(done.stderr)
    for message in [*messages, "nothing was signed"]:
        assert message in said, said
    assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no certificate, no record
    assert not cert_path_for(public_key).exists()


def test_refused_shares_are_not_kept_and_valid_ones_still_sign(kits: Kits, tmp_path: Path) -> None:
    """The control for the refusals above: after a mistyped share and another kit's share, two
    valid shares of the kit still sign (a refused share is never combined)."""
    public_key = make_user_key(tmp_path / "id_ed25519", "alice@laptop")
    given = [mistyped(kits.shares[0]), kits.other_shares[1], kits.shares[0], kits.shares[4]]
    done = kits.site.offline(given, public_key, duration="5m", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert words(done.stderr).count("refused:") == 2
    out = json.loads(done.stdout)
    assert cert_path_for(public_key).exists()
    record = json.loads((tmp_path / out["record_path"]).read_text())["record"]
    assert record["id"] == out["record_id"]


@pytest.mark.parametrize(
    ("case", "message"),
    [("an existing file", "the file exists"), ("a missing directory", "there is no directory")],
)
def test_unusable_record_destination_is_refused_before_any_share(
    kits: Kits, case: str, message: str, tmp_path: Path
) -> None:
    """``--out`` naming an existing file or a missing directory: refused before the shares are
    asked for; the existing file is untouched and no certificate is written (a certificate never
    exists without its record)."""
    public_key = make_user_key(tmp_path / "id_ed25519", "alice@laptop")
    out = tmp_path / "record.json" if case == "an existing file" else tmp_path / "no" / "r.json"
    if case == "an existing file":
        out.write_text("an earlier record\n")
    done = kits.site.offline(kits.shares[:2], public_key, duration="5m", cwd=tmp_path, out=out)
    assert done.returncode == EXIT_BAD_INPUT, (done.stdout, done.stderr)
    assert message in words(done.stderr)
    assert "share 1" not in done.stderr
    assert not cert_path_for(public_key).exists()
    assert not (tmp_path / "no").exists()
    if case == "an existing file":
        assert out.read_text() == "an earlier record\n"


def test_mistyped_share_is_made_of_real_words(kits: Kits) -> None:
    """The mistyped share differs by one real word: only the checksum can catch it."""
    share = kits.shares[0]
    changed = mistyped(share)
    differing = [(a, b) for a, b in zip(share.split(), changed.split(), strict=True) if a != b]
    assert len(differing) == 1
    assert all(word in WORDLIST for word in changed.split())


# --- e): rotation -------------------------------------------------------------------------------
def test_rotation_drops_the_old_kit_so_its_certificates_are_refused(
    tmp_path: Path, stack: ExitStack
) -> None:
    """After ``kit rotate``, ``/v1/ssh/ca`` no longer serves the old kit's line; an sshd using the
    served lines refuses a still-valid certificate of the old kit and accepts the new kit's."""
    site = installation(tmp_path / "keyturn")
    stack.callback(site.stop)
    old = site.kit("create")
    site.start()
    db1 = target(tmp_path / "db-1", site.ca_lines(), site.krl())
    stack.callback(db1.stop)
    laptop = tmp_path / "laptop"
    key = laptop / "id_ed25519"
    public_key = make_user_key(key, "alice@laptop")

    done = site.offline(
        [old["shares"][0], old["shares"][4]], public_key, duration="10m", cwd=laptop
    )
    assert done.returncode == 0, done.stderr
    old_cert = laptop / "old-cert.pub"
    shutil.move(cert_path_for(public_key), old_cert)
    assert certificate_facts(old_cert)["signing_ca"] == old["kit"]["fingerprint"]
    assert ssh_login(db1, key, old_cert).returncode == 0

    # A rotation asking for 0 shares or a threshold of 0 is refused, not silently defaulted,
    # and leaves the kit in force (both run at once: each fails before writing anything).
    kit_text, served_before = site.kit_file.read_text(), site.ca_lines()
    with ThreadPoolExecutor() as pool:
        zeros = list(
            pool.map(
                lambda option: site.run(
                    "break-glass", "kit", "rotate", "-c", str(site.config), option, "0"
                ),
                ["--threshold", "--shares"],
            )
        )
    for option, refused in zip(["threshold", "shares"], zeros, strict=True):
        assert refused.returncode == EXIT_BAD_INPUT, (option, refused.stdout, refused.stderr)
        assert f"{option} must be" in words(refused.stderr)
    assert site.kit_file.read_text() == kit_text
    assert site.ca_lines() == served_before
    assert site.audit("break_glass.kit_rotated") == []

    new = site.kit("rotate")
    assert new["kit"]["kit_id"] != old["kit"]["kit_id"]
    assert set(new["shares"]).isdisjoint(old["shares"])
    assert json.loads(site.kit_file.read_text()) == new["kit"]
    served = site.ca_lines()
    assert old["kit"]["public_key"] not in served
    assert served[1:] == [new["kit"]["public_key"]]
    assert site.kit_state() == {"state": "ready", "kit_id": new["kit"]["kit_id"], "spent_at": None}
    rotated = site.audit("break_glass.kit_rotated")
    assert [e["details"]["retired_kit_id"] for e in rotated] == [old["kit"]["kit_id"]]

    # Until the target takes the served lines, it still trusts the old kit (it has its own copy).
    assert ssh_login(db1, key, old_cert).returncode == 0
    db1.ca_public_key.write_text("".join(line + "\n" for line in served))
    # sshd reads TrustedUserCAKeys at every login: no restart needed.
    assert ssh_login(db1, key, old_cert).returncode != 0

    # Old shares open nothing with the new kit file.
    stale = site.offline(old["shares"][:2], public_key, duration="5m", cwd=laptop)
    assert stale.returncode == EXIT_BAD_INPUT, (stale.stdout, stale.stderr)
    assert "belongs to another kit" in words(stale.stderr)
    assert not cert_path_for(public_key).exists()

    done = site.offline([new["shares"][2], new["shares"][3]], public_key, duration="5m", cwd=laptop)
    assert done.returncode == 0, done.stderr
    new_cert = cert_path_for(public_key)
    assert certificate_facts(new_cert)["signing_ca"] == new["kit"]["fingerprint"]
    assert ssh_login(db1, key, new_cert).returncode == 0
    assert ssh_login(db1, key, old_cert).returncode != 0


# --- f): the sealed directory password ----------------------------------------------------------
def test_sealed_directory_password_opens_with_the_shares_and_changes_at_rotation(
    tmp_path: Path, slapd: Slapd
) -> None:
    """``kit create`` sets a random password on the emergency account in slapd and seals it; the
    shares reveal it and it binds. ``kit rotate`` replaces it: the old one no longer binds, the
    new one (revealed with the new shares) does."""
    site = installation(
        tmp_path / "keyturn",
        ldap_url=slapd.url,
        env={LDAP_PASSWORD_ENV: slapd.service_password},
        directory_account=slapd.emergency_dn,
    )
    laptop = tmp_path / "laptop"
    public_key = make_user_key(laptop / "id_ed25519", "alice@laptop")

    def reveal(shares: list[str]) -> dict[str, Any]:
        cert_path_for(public_key).unlink(missing_ok=True)
        done = site.offline(shares, public_key, duration="5m", cwd=laptop, reveal=True)
        assert done.returncode == 0, done.stderr
        data: dict[str, Any] = json.loads(done.stdout)
        assert data["directory_account"] == slapd.emergency_dn
        return data

    created = site.kit("create")
    sealed = created["kit"]["sealed"]
    assert list(sealed) == ["directory_password"]
    assert sealed["directory_password"]["dn"] == slapd.emergency_dn
    first = reveal(created["shares"][1:3])["directory_password"]
    assert len(first) >= 24
    assert first not in site.kit_file.read_text()
    assert first not in json.dumps(created)
    assert binds(slapd, slapd.emergency_dn, first)

    rotated = site.kit("rotate")
    assert not binds(slapd, slapd.emergency_dn, first)
    second = reveal([rotated["shares"][0], rotated["shares"][4]])["directory_password"]
    assert second != first
    assert binds(slapd, slapd.emergency_dn, second)

    # Keyturn's own read-back (the LDAP provider's check_password) agrees with slapd.
    config = load_config(site.config).config
    assert config.ldap is not None
    directory = build_ldap_provider(
        config.ldap,
        roles={r.name: r for r in config.roles},
        users={u.id: u for u in config.users},
        environ=site.env,
    )
    try:
        assert directory.check_password(slapd.emergency_dn, second)
        assert not directory.check_password(slapd.emergency_dn, first)
        assert not directory.check_password(slapd.emergency_dn, "")  # never an anonymous bind
    finally:
        directory.close()

    # The old shares cannot open the new kit's password.
    stale = site.offline(created["shares"][1:3], public_key, duration="5m", cwd=laptop, reveal=True)
    assert stale.returncode == EXIT_BAD_INPUT, (stale.stdout, stale.stderr)
    assert "belongs to another kit" in words(stale.stderr)
    assert stale.stdout == ""
