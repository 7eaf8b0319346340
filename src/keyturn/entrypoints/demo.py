"""``keyturn demo``: the 02:45 story against real sshd, OpenLDAP and Alertmanager servers.

Starts a Keyturn server (store in a temporary directory), two sshd servers standing for ``db-1``
and ``db-2``, a slapd standing for the corporate directory and a Prometheus Alertmanager that
sends its webhooks to Keyturn, then plays the story with the same HTTP client the CLI uses,
checking every observed outcome against the real servers (ssh logins, LDAP searches, alert
state). Exits 0 only if every outcome is the expected one.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import ldap
import yaml
from rich.console import Console

from keyturn import bootstrap
from keyturn.config import normalize_dn, parse_config
from keyturn.domain.errors import Forbidden, KeyturnError
from keyturn.entrypoints import cli_render as render
from keyturn.entrypoints.api.app import token_digest
from keyturn.entrypoints.cli import cert_path_for
from keyturn.entrypoints.cli_client import Client, Settings
from keyturn.entrypoints.gateway import GatewayThread
from keyturn.entrypoints.server import Server, record_start
from keyturn.lab import (
    Alertmanager,
    Slapd,
    Sshd,
    child_dn,
    example_directory,
    free_port,
    make_user_key,
    ssh_client_args,
    ssh_login,
)
from keyturn.ports import Clock
from keyturn.service import break_glass

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "keyturn.yaml"
ALERTMANAGER = "alertmanager"  # the key of the webhook token among the demo's tokens
ALERT = {"alertname": "PostgresPrimaryDown", "instance": "db-1:9187", "severity": "critical"}


@dataclass
class Story:
    """Prints the timeline and counts surprises."""

    t0: float = field(default_factory=time.monotonic)
    surprises: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        """One timeline line."""
        print(f"[{time.monotonic() - self.t0:6.2f}s] {text}", flush=True)

    def expect(self, label: str, observed: str, expected: str) -> None:
        """Print an observed outcome and remember it if it is not the expected one."""
        ok = observed == expected
        mark = "ok" if ok else f"UNEXPECTED (expected {expected})"
        self.say(f"  {label}: {observed}  [{mark}]")
        if not ok:
            self.surprises.append(f"{label}: observed {observed}, expected {expected}")


def _config(
    tmp: Path, port: int, tokens: dict[str, str], sshd_ports: dict[str, int], ldap_url: str
) -> Any:
    """The example configuration with the demo's ports, paths and tokens; also written to
    ``tmp/keyturn.yaml`` (the file the offline break-glass command reads)."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["ldap"]["url"] = ldap_url
    data["store"] = {"url": f"sqlite:///{tmp / 'keyturn.db'}"}
    data["ssh_ca"] = {"key_path": str(tmp / "ca" / "user_ca"), "clock_skew": "PT5S"}
    data["server"].update({"port": port, "worker_max_sleep": "PT0.2S"})
    for user in data["users"]:
        user["token_sha256"] = token_digest(tokens[user["id"]])
    for target in data["targets"]:
        if target["name"] in sshd_ports:
            target["port"] = sshd_ports[target["name"]]
            target["login"] = getpass.getuser()
            host_key = tmp / f"sshd-{target['name']}" / "host_ed25519"
            target["host_key"] = host_key.with_name(host_key.name + ".pub").read_text().strip()
    data["gateway"] = {
        "port": free_port(),
        "host_key_path": str(tmp / "ca" / "gateway_host_key"),
        "recordings_dir": str(tmp / "recordings"),
        "grant_check_interval": "PT0.2S",
    }
    for schedule in data["oncall"]["schedules"]:
        schedule["ical"] = str(EXAMPLE.parent / schedule["ical"])
    data["policy"]["tests"] = str(EXAMPLE.parent / data["policy"]["tests"])
    data["alerts"]["bearer_token_sha256"] = token_digest(tokens[ALERTMANAGER])
    data["break_glass"]["kit_path"] = str(tmp / "ca" / "break-glass-kit.json")
    raw = yaml.safe_dump(data).encode()
    (tmp / "keyturn.yaml").write_bytes(raw)
    return parse_config(data, source="examples/keyturn.yaml (demo overrides)", raw=raw)


def _ssh(story: Story, who: str, sshd: Sshd, key: Path, *, target: str, expected: str) -> None:
    result = ssh_login(sshd, key, cert_path_for(key.with_name(key.name + ".pub")))
    observed = "accepted" if result.returncode == 0 else "refused"
    story.expect(f"ssh as {who} to {target} (real sshd :{sshd.port})", observed, expected)


def _request(story: Story, client: Client, who: str, body: dict[str, Any], key: Path | None) -> Any:
    if key is not None:
        body["ssh_public_key"] = key.with_name(key.name + ".pub").read_text()
    started = time.perf_counter()
    data = client.call("POST", "/v1/requests", json=body)
    elapsed_ms = (time.perf_counter() - started) * 1000
    d = data["decision"]
    story.say(
        f"{who} requests {body['role']} on {body['target']} for {body['duration']}: "
        f"{d['outcome']} by rule {d['rule']} — {'; '.join(d['reasons'])}"
    )
    if data.get("grant"):
        story.say(
            f"  grant {data['grant']['id']} {data['grant']['status']} in {elapsed_ms:.1f} ms "
            f"(until {data['grant']['not_after']})"
        )
    _save_cert(data, key)
    return data


def _save_cert(data: dict[str, Any], key: Path | None) -> None:
    cert = ((data.get("grant") or {}).get("credentials") or {}).get("ssh_certificate")
    if cert and key is not None:
        cert_path_for(key.with_name(key.name + ".pub")).write_text(cert + "\n")


def _play(story: Story, tmp: Path, window_s: int) -> None:
    tokens = {
        u: "kt_" + secrets.token_urlsafe(24)
        for u in ("alice", "bob", "carol", "dave", "erin", "mallory", "sam", ALERTMANAGER)
    }
    ca_dir = tmp / "ca"
    krl = ca_dir / "revoked.krl"
    trusted = tmp / "targets" / "trusted_user_ca_keys"  # what GET /v1/ssh/ca served them
    db1 = Sshd(
        tmp / "sshd-db-1",
        trusted,
        krl,
        ["server-admin@db-1", "db-schema-admin@db-1", "db-admin@db-1"],
    )
    db2 = Sshd(
        tmp / "sshd-db-2",
        trusted,
        krl,
        ["server-admin@db-2", "db-schema-admin@db-2"],
    )
    for sshd in (db1, db2):  # host keys first: the gateway's configuration names them
        make_user_key(sshd.workdir / "host_ed25519", "keyturn-lab-host")
    port = free_port()
    directory = example_directory(tmp / "slapd")
    password_env = {"KEYTURN_LDAP_PASSWORD": directory.service_password}
    try:
        config = _config(tmp, port, tokens, {"db-1": db1.port, "db-2": db2.port}, directory.url)
        wired = bootstrap.build(config, environ=os.environ | password_env)
    except BaseException:
        directory.stop()
        raise
    record_start(wired, "api")
    trusted.parent.mkdir(parents=True, exist_ok=True)
    trusted.write_text(wired.ssh.ca_public_line + "\n")
    servers = [Server(wired, "127.0.0.1", port)]
    servers[0].start()
    monitoring = Alertmanager(
        tmp / "alertmanager",
        f"http://127.0.0.1:{port}/v1/webhooks/alertmanager",
        bearer_token=tokens[ALERTMANAGER],
    )
    try:
        db1.start()
        db2.start()
        monitoring.start()
        story.say(
            f"keyturn serving on 127.0.0.1:{port}; sshd db-1 on :{db1.port}, db-2 on :{db2.port}; "
            f"slapd (corp directory) on :{directory.port}; Alertmanager on :{monitoring.port}"
        )
        people = [u for u in tokens if u != ALERTMANAGER]
        clients = {u: Client(Settings(f"http://127.0.0.1:{port}", tokens[u])) for u in people}
        keys = {u: tmp / "home" / u / "id_ed25519" for u in ("alice", "bob", "dave", "mallory")}
        for user, key in keys.items():
            make_user_key(key, f"{user}@laptop")
        try:
            _incident_scene(story, clients=clients, keys=keys, db1=db1, monitoring=monitoring)
            _scene(
                story,
                clients=clients,
                keys=keys,
                db1=db1,
                db2=db2,
                directory=directory,
                window_s=window_s,
            )
            _gateway_scene(
                story,
                wired=wired,
                clients=clients,
                alice_key=keys["alice"],
                port=port,
                sam_token=tokens["sam"],
            )
            _break_glass_scene(
                story,
                tmp=tmp,
                wired=wired,
                servers=servers,
                clients=clients,
                alice_key=keys["alice"],
                db1=db1,
                trusted=trusted,
            )
            _verify_and_timeline(story, clients["sam"])
        finally:
            for client in clients.values():
                client.close()
    finally:
        servers[-1].stop()
        monitoring.stop()
        db1.stop()
        db2.stop()
        directory.stop()
        wired.close()


def _incident_scene(
    story: Story,
    *,
    clients: dict[str, Client],
    keys: dict[str, Path],
    db1: Sshd,
    monitoring: Alertmanager,
) -> None:
    """The seed's 02:45: an alert fires, the on-call engineer gets in at once, explained;
    someone not on call needs two reviews; once the alert resolves, so does the on-call one."""
    story.say("02:45 — Prometheus fires PostgresPrimaryDown for db-1 (real Alertmanager) …")
    monitoring.post_alert(ALERT, {"summary": "primary database db-1 is not accepting writes"})
    story.expect(
        "keyturn sees the alert (Alertmanager webhook → db-1)",
        _wait_alerting(clients["sam"], "db-1", firing=True),
        "alerting",
    )
    ask = {
        "role": "db-admin",
        "target": "db-1",
        "duration": "PT30M",
        "justification": "INC-4711: PostgresPrimaryDown on db-1, failing over to the replica",
        "ticket": "INC-4711",
    }
    alice = _request(story, clients["alice"], "alice", dict(ask), keys["alice"])
    story.expect("alice (on call for 'database') asks for db-admin", alice["status"], "approved")
    story.expect("deciding rule", alice["decision"]["rule"], "oncall-incident")
    print("  why (keyturn requests show):", flush=True)
    render.explanation(_INDENTED, alice["decision"], facts=True)
    _ssh(story, "alice", db1, keys["alice"], target="db-1 as db-admin", expected="accepted")
    released = clients["alice"].call("POST", f"/v1/grants/{alice['grant']['id']}/release")
    story.say(f"alice fails over, then releases her grant: {released['status']}")

    dave = _request(story, clients["dave"], "dave", dict(ask), keys["dave"])
    story.expect("dave (not on call) asks for the same", dave["status"], "pending")
    story.expect(
        "reviews needed (dave cannot review his own)", str(dave["decision"]["approvals"]), "2"
    )
    first = clients["carol"].call("POST", f"/v1/requests/{dave['id']}/approve", json={})
    story.expect("after carol approves", first["status"], "pending")
    second = clients["erin"].call("POST", f"/v1/requests/{dave['id']}/approve", json={})
    story.expect("after erin approves", second["status"], "approved")
    clients["dave"].call("POST", f"/v1/grants/{second['grant']['id']}/release")

    story.say("03:20 — db-1 recovers; Alertmanager sends the resolved notification …")
    monitoring.resolve_alert(ALERT, annotations={"summary": "recovered"})
    story.expect(
        "keyturn sees the alert resolve",
        _wait_alerting(clients["sam"], "db-1", firing=False),
        "not alerting",
    )
    again = _request(story, clients["alice"], "alice", dict(ask), keys["alice"])
    story.expect("alice asks again, alert resolved", again["status"], "pending")
    clients["alice"].call("POST", f"/v1/requests/{again['id']}/cancel", json={})


_INDENTED = Console(markup=False, highlight=False, soft_wrap=True)


def _wait_alerting(client: Client, target: str, *, firing: bool, timeout: float = 20) -> str:
    """Poll Keyturn's alert state for ``target`` until it is (not) alerting, or time out."""
    deadline = time.monotonic() + timeout
    alerting = not firing
    while time.monotonic() < deadline:
        items = client.call("GET", "/v1/alerts", params={"target": target})["items"]
        alerting = bool(items)
        if alerting == firing:
            break
        time.sleep(0.1)
    return "alerting" if alerting else "not alerting"


def _scene(
    story: Story,
    *,
    clients: dict[str, Client],
    keys: dict[str, Path],
    db1: Sshd,
    db2: Sshd,
    directory: Slapd,
    window_s: int,
) -> None:
    story.say("Everyday access: standard roles, a reviewed schema change, a revocation.")
    alice = _request(
        story,
        clients["alice"],
        "alice",
        {
            "role": "server-admin",
            "target": "db-1",
            "duration": f"PT{window_s}S",
            "justification": "INC-4711: primary database db-1 down, restoring service",
            "ticket": "INC-4711",
        },
        keys["alice"],
    )
    story.expect("alice's request", alice["status"], "approved")
    _ssh(story, "alice", db1, keys["alice"], target="db-1", expected="accepted")
    _ssh(story, "alice", db2, keys["alice"], target="db-2 (not granted)", expected="refused")
    alice_group = _directory_scene(story, clients, directory, window_s)

    bob = _request(
        story,
        clients["bob"],
        "bob",
        {
            "role": "db-schema-admin",
            "target": "db-1",
            "duration": "PT10M",
            "justification": "apply emergency index migration 0042",
        },
        keys["bob"],
    )
    story.expect("bob's request", bob["status"], "pending")
    try:
        clients["bob"].call("POST", f"/v1/requests/{bob['id']}/approve", json={})
        observed = "allowed"
    except Forbidden as exc:
        observed = "refused (403)"
        story.say(f"  bob tries to approve his own request: {exc.message}")
    except KeyturnError as exc:
        observed = f"refused ({type(exc).__name__})"
    story.expect("bob approves his own request", observed, "refused (403)")
    approved = clients["carol"].call(
        "POST", f"/v1/requests/{bob['id']}/approve", json={"comment": "ok, go"}
    )
    story.say(f"carol approves: request {approved['status']}, grant {approved['grant']['status']}")
    _save_cert(clients["bob"].call("GET", f"/v1/requests/{bob['id']}"), keys["bob"])
    _ssh(story, "bob", db1, keys["bob"], target="db-1", expected="accepted")
    revoked = clients["sam"].call("POST", f"/v1/grants/{approved['grant']['id']}/revoke")
    story.say(
        f"sam (security) revokes bob's grant early: {revoked['status']} "
        f"(serial {revoked['serial']} on the KRL)"
    )
    _ssh(story, "bob", db1, keys["bob"], target="db-1 after revoke", expected="refused")

    mallory = _request(
        story,
        clients["mallory"],
        "mallory",
        {
            "role": "server-admin",
            "target": "db-1",
            "duration": "PT1H",
            "justification": "just looking",
        },
        keys["mallory"],
    )
    story.expect("mallory's request", mallory["status"], "denied")

    not_after = alice["grant"]["not_after"]
    story.say(f"waiting for alice's window to close at {not_after} …")
    _wait_for_status(clients["sam"], alice["grant"]["id"], "revoked", timeout=window_s + 20)
    _ssh(story, "alice", db1, keys["alice"], target="db-1 after her window", expected="refused")
    grant = clients["alice"].call("GET", f"/v1/requests/{alice['id']}")["grant"]
    story.expect("alice's grant", f"{grant['status']} ({grant['end_reason']})", "revoked (expired)")
    _wait_for_status(clients["sam"], alice_group, "revoked", timeout=20)
    _ldap_search(story, directory, "alice", "after her window", expected="not a member")


def _verify_and_timeline(story: Story, auditor: Client) -> None:
    verify = auditor.call("GET", "/v1/audit/verify")
    story.expect(
        f"keyturn audit verify ({verify['events']} events)",
        "ok" if verify["ok"] else "broken",
        "ok",
    )
    _timeline(story, auditor)


def _break_glass_scene(
    story: Story,
    *,
    tmp: Path,
    wired: bootstrap.App,
    servers: list[Server],
    clients: dict[str, Client],
    alice_key: Path,
    db1: Sshd,
    trusted: Path,
) -> None:
    """Keyturn is down; alice breaks glass with two custodians' shares; Keyturn comes back, the
    record is imported, the review opens, the kit is rotated and its certificates stop working."""
    kit, shares = break_glass.create_kit(wired.deps, "demo", threshold=2, shares=5)
    kit_file = Path(wired.deps.config.break_glass.kit_path)
    kit_file.write_text(json.dumps(kit.public_data(), indent=2) + "\n")
    trusted.write_text(clients["sam"].call("GET", "/v1/ssh/ca"))
    story.say(
        f"break-glass kit {kit.id}: 5 shares on paper, any 2 rebuild the key; targets now trust "
        "the kit's CA line next to Keyturn's (GET /v1/ssh/ca)"
    )
    servers[-1].stop()
    story.say("02:50 Keyturn itself is down (server stopped); alice breaks glass offline")
    offline_config = tmp / "offline.yaml"
    config_data = yaml.safe_load((tmp / "keyturn.yaml").read_text())
    config_data["store"] = {"url": f"sqlite:///{tmp / 'nowhere' / 'absent.db'}"}
    offline_config.write_text(yaml.safe_dump(config_data))
    result = _run_cli(
        "break-glass",
        "offline",
        "-c",
        str(offline_config),
        "--kit",
        str(kit_file),
        "--role",
        "db-admin",
        "--target",
        "db-1",
        "--ssh-key",
        str(alice_key.with_name(alice_key.name + ".pub")),
        "--justification",
        "Keyturn and the primary are down; failing over db-1 by hand",
        "--name",
        "alice",
        "--for",
        "10m",
        "--out",
        str(tmp / "break-glass-record.json"),
        stdin=f"{shares[1]}\n{shares[4]}\n",
    )
    story.expect(
        "keyturn break-glass offline with shares 2 and 5 (typed by the demo)",
        "signed" if result.returncode == 0 else f"failed: {result.stderr.strip()[-200:]}",
        "signed",
    )
    if result.returncode != 0:
        return
    _ssh(story, "alice (offline cert)", db1, alice_key, target="db-1", expected="accepted")
    record = tmp / "break-glass-record.json"
    servers.append(Server(wired, "127.0.0.1", servers[-1].uvicorn.config.port))
    servers[-1].start()
    story.say("03:20 Keyturn is back; sam imports the record")
    review = clients["sam"].call(
        "POST",
        "/v1/break-glass/records",
        content=record.read_bytes(),
        headers={"Content-Type": "application/json"},
    )
    story.expect("record imported, post-incident review", review["status"], "open")
    state = clients["sam"].call("GET", "/v1/break-glass/kit")["state"]
    story.expect("the kit", state, "spent")
    new_kit, _ = break_glass.create_kit(wired.deps, "demo", threshold=2, shares=5, rotate=True)
    trusted.write_text(clients["sam"].call("GET", "/v1/ssh/ca"))
    story.say(f"kit rotated to {new_kit.id}; targets refreshed their CA lines")
    _ssh(story, "alice (old kit's cert)", db1, alice_key, target="db-1", expected="refused")


def _gateway_scene(
    story: Story,
    *,
    wired: bootstrap.App,
    clients: dict[str, Client],
    alice_key: Path,
    port: int,
    sam_token: str,
) -> None:
    """alice works on db-1 through the recording gateway; her grant ends and so does her open
    session; sam replays the recording."""
    gateway = GatewayThread(wired).start()
    try:
        known_hosts = alice_key.with_name("known_hosts")
        known_hosts.write_text(f"[127.0.0.1]:{gateway.port} {gateway.gateway.host_key_line}\n")
        story.say(
            f"the recording SSH gateway listens on :{gateway.port}; alice runs "
            f"'ssh -p {gateway.port} db-1@127.0.0.1' with her Keyturn certificate"
        )
        ask = {
            "role": "server-admin",
            "target": "db-1",
            "duration": "PT8S",
            "justification": "INC-4712: check replication lag on db-1 after the failover",
        }
        data = _request(story, clients["alice"], "alice", ask, alice_key)
        for reviewer in ("carol", "erin"):
            if data["status"] == "pending":
                data = clients[reviewer].call("POST", f"/v1/requests/{data['id']}/approve", json={})
        _save_cert(data, alice_key)
        story.expect("alice's grant for the gateway session", data["status"], "approved")
        if data["status"] != "approved":
            return
        not_after = datetime.fromisoformat(data["grant"]["not_after"].replace("Z", "+00:00"))
        ended = _gateway_session(
            story,
            gateway_port=gateway.port,
            key=alice_key,
            known_hosts=known_hosts,
            not_after=not_after,
            clock=wired.deps.clock,
        )
        sessions = clients["sam"].call(
            "GET", "/v1/sessions", params={"grant_id": data["grant"]["id"]}
        )
        session = sessions["items"][0] if sessions["items"] else {}
        story.expect("session ended because", str(session.get("end_reason")), "grant_ended")
        story.expect("cut within 2 s of the grant's end", str(ended <= 2.0), "True")
        story.say(f"sam replays {session.get('id')} (keyturn sessions play, 4x speed):")
        replay = _run_cli(
            "sessions",
            "play",
            str(session.get("id")),
            "--speed",
            "4",
            stdin="",
            env={"KEYTURN_URL": f"http://127.0.0.1:{port}", "KEYTURN_TOKEN": sam_token},
        )
        for line in replay.stdout.splitlines():
            print(f"    | {line}", flush=True)
        story.expect("replay shows what alice ran", str("replication-ok" in replay.stdout), "True")
        verify = clients["sam"].call("GET", "/v1/audit/verify")
        story.expect("audit verify (recording hashes included)", str(verify["ok"]), "True")
    finally:
        gateway.stop()


def _gateway_session(
    story: Story,
    *,
    gateway_port: int,
    key: Path,
    known_hosts: Path,
    not_after: datetime,
    clock: Clock,
) -> float:
    """An interactive session through the gateway that is still open when the grant ends;
    returns the seconds from ``not_after`` to the moment ssh exited."""
    args = ssh_client_args(
        key,
        cert_path_for(key.with_name(key.name + ".pub")),
        port=gateway_port,
        destination="db-1@127.0.0.1",
        known_hosts=known_hosts,
        extra=("-tt",),
    )
    with subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as proc:
        if proc.stdin is not None:
            proc.stdin.write(b"echo replication-ok; date -u +%T\n")
            proc.stdin.flush()
        story.say("  alice's shell is open; she leaves it running …")
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            output = b""
        exited = clock.now()
    told = [ln for ln in output.decode(errors="replace").splitlines() if "keyturn:" in ln]
    story.say(f"  the gateway told her: {told[-1].strip() if told else '(nothing)'}")
    return (exited - not_after).total_seconds()


def _run_cli(
    *args: str, stdin: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ``keyturn`` command line of this interpreter (no server URL or token unless
    ``env`` gives them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")} | (env or {})
    return subprocess.run(
        [sys.executable, "-c", "from keyturn.entrypoints.cli import main; main()", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )


DB_ADMINS = "cn=db-admins,ou=groups,dc=example,dc=org"


def _ldap_search(story: Story, directory: Slapd, user: str, when: str, *, expected: str) -> None:
    """Read the group from the real slapd, as ``ldapsearch -b cn=db-admins,… member`` would."""
    user_dn = child_dn("uid", user, directory.people_base)
    members = {normalize_dn(m) for m in directory.members(DB_ADMINS)}
    observed = "member" if normalize_dn(user_dn) in members else "not a member"
    story.expect(f"LDAP search: {user} in cn=db-admins {when} (real slapd)", observed, expected)


def _directory_scene(
    story: Story, clients: dict[str, Client], directory: Slapd, window_s: int
) -> str:
    """Alice gets db-admins membership for a short window; a hand-added member is found."""
    group = _request(
        story,
        clients["alice"],
        "alice",
        {
            "role": "db-admins",
            "target": "corp-directory",
            "duration": f"PT{window_s}S",
            "justification": "INC-4711: promote the replica; needs db-admins in the directory",
            "ticket": "INC-4711",
        },
        None,
    )
    story.expect("alice's db-admins request", group["status"], "approved")
    _ldap_search(story, directory, "alice", "during her window", expected="member")
    mallory_dn = child_dn("uid", "mallory", directory.people_base)
    conn = directory.connect()
    conn.modify_s(DB_ADMINS, [(ldap.MOD_ADD, "member", [mallory_dn.encode()])])
    conn.unbind_s()
    story.say("someone adds mallory to cn=db-admins by hand, outside Keyturn …")
    found = clients["sam"].call("POST", "/v1/reconcile", json={"dry_run": False})
    standing = [f for f in found["findings"] if f["kind"] == "standing"]
    story.expect(
        "keyturn reconcile: standing privileges in cn=db-admins",
        ", ".join(f"{f['user_id']} ({f['action']})" for f in standing) or "none",
        "mallory (reported)",
    )
    return str(group["grant"]["id"])


def _wait_for_status(client: Client, grant_id: str, status: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = client.call("GET", "/v1/grants", params={"limit": 100})["items"]
        if any(g["id"] == grant_id and g["status"] == status for g in items):
            return
        time.sleep(0.2)


def _timeline(story: Story, auditor: Client) -> None:
    events = auditor.call("GET", "/v1/audit", params={"limit": 1000})["items"]
    print("\naudit timeline (who, what, decision and rule, time to grant):")
    for e in events:
        d = e["details"]
        extra = ""
        if e["action"] == "request.decided":
            extra = f"{d['outcome']} by {d['rule']}"
        elif e["action"] == "grant.issued":
            extra = f"granted in {d['time_to_grant_ms']} ms, until {d['not_after']}"
        elif e["action"] in ("grant.expired", "grant.revoked", "grant.released"):
            extra = "verified" if d.get("verified") else ""
        elif e["action"] == "break_glass.imported":
            extra = f"offline record {d['record']['id']}; review {d['review_id']} open"
        elif e["action"] in ("break_glass.kit_created", "break_glass.kit_rotated"):
            extra = f"kit {d['kit_id']} ({d['threshold']} of {d['shares']} shares)"
        elif e["action"] == "reconcile.finding":
            extra = f"{d['kind']}: {e['subject']['identity']} ({d['action']})"
        who = e["subject"].get("user_id", "")
        print(
            f"  {e['seq']:>3} {e['at'][11:23]} {e['actor']:<14} {e['action']:<18} {who:<8} {extra}"
        )


def run_demo(*, keep: bool = False, window_s: int = 15) -> int:
    """Play the story; return the exit code (0 when every outcome was as expected)."""
    story = Story()
    tmp = Path(tempfile.mkdtemp(prefix="keyturn-demo-"))
    try:
        _play(story, tmp, window_s)
    finally:
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if story.surprises:
        print(f"\nDEMO FAILED: {len(story.surprises)} unexpected outcome(s):")
        for s in story.surprises:
            print(f"  - {s}")
        return 1
    print(f"\ndemo finished in {time.monotonic() - story.t0:.1f}s: every outcome as expected")
    return 0
