"""``keyturn``: the command line. Commands parse, call the API (or a service), and render.

Server URL and token: ``--url``/``--token``, ``KEYTURN_URL``/``KEYTURN_TOKEN``, or
``~/.config/keyturn/cli.yaml``. Tables for people; ``--output json`` for scripts. Exit codes are
listed in ``keyturn.entrypoints.cli_errors``.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from keyturn.domain.durations import parse_short_duration, to_iso_duration
from keyturn.domain.errors import ConfigError, KeyturnError
from keyturn.entrypoints import cli_render as render
from keyturn.entrypoints.cli_client import Client, resolve
from keyturn.entrypoints.cli_errors import EXIT_AUDIT_BROKEN, EXIT_DENIED, exit_code

app = typer.Typer(
    name="keyturn",
    help="Keyturn: just-in-time privileged access. Ask for a role on a target for a while, "
    "with a reason; get it in milliseconds; lose it when the window closes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
requests_app = typer.Typer(help="List and show access requests.", invoke_without_command=True)
grants_app = typer.Typer(help="List grants.", invoke_without_command=True)
audit_app = typer.Typer(
    help="Read and verify the audit chain; import offline break-glass records.",
    no_args_is_help=True,
)
config_app = typer.Typer(
    help="Check the configuration file; print its JSON Schema.", no_args_is_help=True
)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
report_app = typer.Typer(
    help="Reports: standing access, habitual (always-on) elevation, break-glass uses.",
    no_args_is_help=True,
)
policy_app = typer.Typer(
    help="Explain a decision; test the policy against cases before deploying it.",
    no_args_is_help=True,
)
app.add_typer(requests_app, name="requests")
app.add_typer(grants_app, name="grants")
app.add_typer(audit_app, name="audit")
app.add_typer(config_app, name="config")
app.add_typer(token_app, name="token")
app.add_typer(report_app, name="report")
app.add_typer(policy_app, name="policy")

out = Console(markup=False, highlight=False, soft_wrap=True)
err = Console(stderr=True, markup=False, highlight=False)


class Output(StrEnum):
    """Output formats."""

    TABLE = "table"
    JSON = "json"


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="KEYTURN_CONFIG", help="Server configuration (YAML)."),
]


class Ctx:
    """Options shared by every client command."""

    def __init__(self, url: str | None, token: str | None, output: Output) -> None:
        self.url, self.token, self.output = url, token, output
        self._client: Client | None = None

    def client(self) -> Client:
        """The API client for this invocation (created once, closed by :meth:`close`)."""
        if self._client is None:
            self._client = Client(resolve(self.url, self.token))
        return self._client

    def close(self) -> None:
        """Close the client's connections."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def emit(self, data: Any, table: Any) -> None:
        """JSON for scripts, the rendered table for people."""
        if self.output is Output.JSON:
            out.print_json(json.dumps(data))
        else:
            table(out, data)


@app.callback()
def main_options(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="Server URL [env KEYTURN_URL].")] = None,
    token: Annotated[
        str | None, typer.Option(help="API token [env KEYTURN_TOKEN]; prefer the env var.")
    ] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json.")] = Output.TABLE,
) -> None:
    """Keyturn command line."""
    ctx.obj = Ctx(url, token, output)
    ctx.call_on_close(ctx.obj.close)


def _ctx(ctx: typer.Context) -> Ctx:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Ctx) else Ctx(None, None, Output.TABLE)


# --- server side ------------------------------------------------------------------------------
def _load_app(config: Path | None) -> Any:
    from keyturn import bootstrap
    from keyturn.policy_cases import load_checked

    if config is None:
        raise ConfigError("no configuration: pass --config PATH or set KEYTURN_CONFIG")
    return bootstrap.build(load_checked(config))


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Listen address (default: server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default: server.port).")] = None,
    worker: Annotated[bool, typer.Option(help="Run the expiry worker in this process.")] = True,
) -> None:
    """Run the API server (and the expiry worker). ``SIGHUP`` reloads the configuration."""
    from keyturn.entrypoints.server import Server, install_reload_signal, record_start

    wired = _load_app(config)
    install_reload_signal(wired)
    record_start(wired, "api")
    _report_readiness(wired)
    cfg = wired.deps.config.server
    err.print(f"keyturn: serving on http://{host or cfg.host}:{port or cfg.port}")
    Server(wired, host or cfg.host, port or cfg.port, with_worker=worker).serve_forever()


def _report_readiness(wired: Any) -> None:
    """Say at start, clearly, which provider cannot work (``/readyz`` says it too)."""
    for name, check in wired.readiness().items():
        if check != "ok":
            err.print(f"keyturn: provider {name} is NOT ready: {check}")


@app.command("worker")
def worker_cmd(
    config: ConfigOpt = None,
    once: Annotated[bool, typer.Option(help="One pass, then exit.")] = False,
) -> None:
    """Run the expiry worker alone (several may share one PostgreSQL store). ``SIGHUP``
    reloads the configuration."""
    import signal
    import threading

    from keyturn.entrypoints import worker
    from keyturn.entrypoints.server import install_reload_signal, record_start

    wired = _load_app(config)
    if once:
        err.print(f"keyturn worker: acted on {worker.run_once(wired)} grants")
        return
    record_start(wired, "worker")
    install_reload_signal(wired)
    _report_readiness(wired)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker.run(wired, stop)


# --- access requests --------------------------------------------------------------------------
def cert_path_for(key_path: Path) -> Path:
    """``~/.ssh/id_ed25519.pub`` → ``~/.ssh/id_ed25519-cert.pub`` (where plain ssh looks)."""
    stem = key_path.name[:-4] if key_path.name.endswith(".pub") else key_path.name
    return key_path.with_name(stem + "-cert.pub")


def read_file(path: Path, option: str) -> str:
    """The text of a file the user named (``--ssh-key``, a record file …).

    Raises:
        InvalidInput: it cannot be read (missing, unreadable, not UTF-8), naming the option.
    """
    from keyturn.domain.errors import InvalidInput

    try:
        return path.expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidInput(f"{option} {path}: cannot read it ({reason})", field=option) from exc


def _write_certificate(data: dict[str, Any], key_path: Path | None) -> Path | None:
    grant = data.get("grant") or {}
    cert = (grant.get("credentials") or {}).get("ssh_certificate")
    if not cert or key_path is None:
        return None
    return write_certificate(key_path, cert)


def write_certificate(key_path: Path, certificate: str) -> Path:
    """Write ``certificate`` next to the public key ``key_path`` (mode 0644, where ssh looks
    for it); return its path. Raises OSError."""
    path = cert_path_for(key_path)
    path.write_text(certificate + "\n")
    os.chmod(path, 0o644)
    return path


@app.command()
def request(
    ctx: typer.Context,
    role: Annotated[str, typer.Argument(help="Role to request, e.g. server-admin.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Target, e.g. db-1.")],
    justification: Annotated[str, typer.Option("--justification", "-j", help="Why you need it.")],
    duration: Annotated[str, typer.Option("--for", help="How long: 30m, 1h30m, PT30M.")] = "30m",
    ticket: Annotated[str | None, typer.Option(help="Ticket or incident id.")] = None,
    ssh_key: Annotated[
        Path | None, typer.Option("--ssh-key", help="Public key to certify (…/id_ed25519.pub).")
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--start",
            help="Activate later: an RFC 3339 time with offset (2026-11-22T08:00:00Z) or a "
            "delay (in 2h). Eligibility and policy are checked again then.",
        ),
    ] = None,
) -> None:
    """Request a role on a target. Writes the SSH certificate next to your key when granted."""
    c = _ctx(ctx)
    body: dict[str, Any] = {
        "role": role,
        "target": target,
        "duration": to_iso_duration(parse_short_duration(duration)),
        "justification": justification,
        "ticket": ticket,
    }
    if start is not None:
        body["start"] = _start_time(start)
    if ssh_key is not None:
        body["ssh_public_key"] = read_file(ssh_key, "--ssh-key")
    data = c.client().call("POST", "/v1/requests", json=body)
    written = _write_certificate(data, ssh_key.expanduser() if ssh_key else None)
    c.emit(data, lambda con, d: render.request_detail(con, d, cert_path=written))
    if data["status"] == "denied":
        raise typer.Exit(EXIT_DENIED)


def _start_time(text: str) -> str:
    """``--start``: an RFC 3339 time with offset, or ``in <duration>`` from now (the client's
    clock, the only place the CLI reads it)."""
    from datetime import UTC, datetime

    from keyturn.domain.errors import InvalidInput

    value = text.strip()
    if value.startswith("in "):
        delay = parse_short_duration(value[3:].strip())
        return (datetime.now(UTC) + delay).isoformat().replace("+00:00", "Z")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInput(
            f"--start {text!r}: give an RFC 3339 time such as 2026-11-22T08:00:00Z or 'in 2h'"
        ) from exc
    if when.tzinfo is None:
        raise InvalidInput("--start needs a UTC offset, e.g. 2026-11-22T08:00:00Z")
    return when.isoformat()


@app.command()
def certificate(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="Access request id.")],
    ssh_key: Annotated[Path, typer.Option("--ssh-key", help="The public key you requested with.")],
) -> None:
    """Fetch the certificate of an approved request (e.g. after review) next to your key."""
    c = _ctx(ctx)
    data = c.client().call("GET", f"/v1/requests/{request_id}")
    written = _write_certificate(data, ssh_key.expanduser())
    c.emit(data, lambda con, d: render.request_detail(con, d, cert_path=written))
    if written is None:
        err.print(f"no certificate yet: request is {data['status']}")
        raise typer.Exit(6)


def _review(ctx: typer.Context, request_id: str, action: str, comment: str | None) -> None:
    c = _ctx(ctx)
    data = c.client().call("POST", f"/v1/requests/{request_id}/{action}", json={"comment": comment})
    c.emit(data, lambda con, d: render.request_detail(con, d, cert_path=None))


CommentOpt = Annotated[str | None, typer.Option("--comment", "-m", help="Why.")]


@app.command()
def approve(ctx: typer.Context, request_id: str, comment: CommentOpt = None) -> None:
    """Approve a pending access request (you cannot approve your own)."""
    _review(ctx, request_id, "approve", comment)


@app.command()
def deny(ctx: typer.Context, request_id: str, comment: CommentOpt = None) -> None:
    """Deny a pending access request."""
    _review(ctx, request_id, "deny", comment)


@app.command()
def cancel(ctx: typer.Context, request_id: str, comment: CommentOpt = None) -> None:
    """Withdraw your own pending access request."""
    _review(ctx, request_id, "cancel", comment)


def _list(
    ctx: typer.Context, path: str, status: str | None, mine: bool, limit: int, table: Any
) -> None:
    c = _ctx(ctx)
    params: dict[str, Any] = {"mine": mine, "limit": limit}
    if status:
        params["status"] = status
    c.emit(c.client().call("GET", path, params=params), table)


@requests_app.callback()
def requests_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="pending, approved, denied, …")] = None,
    mine: Annotated[bool, typer.Option(help="Only your own requests.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """List access requests you can see (yours, those you review; admins: all)."""
    if ctx.invoked_subcommand is None:
        _list(ctx, "/v1/requests", status, mine, limit, render.request_table)


@requests_app.command("show")
def requests_show(ctx: typer.Context, request_id: str) -> None:
    """Show one request: decision (rule, reasons, trace), reviews, grant."""
    c = _ctx(ctx)
    data = c.client().call("GET", f"/v1/requests/{request_id}")
    c.emit(data, lambda con, d: render.request_detail(con, d, cert_path=None))


@grants_app.callback()
def grants_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="active, revoke_failed, revoked, …")] = None,
    mine: Annotated[bool, typer.Option(help="Only your own grants.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """List grants (admins: all; others: their own)."""
    if ctx.invoked_subcommand is None:
        _list(ctx, "/v1/grants", status, mine, limit, render.grant_table)


def _end(ctx: typer.Context, grant_id: str, action: str) -> None:
    c = _ctx(ctx)
    data = c.client().call("POST", f"/v1/grants/{grant_id}/{action}")
    c.emit(data, render.grant_detail)
    if data["status"] != "revoked":
        raise typer.Exit(1)


@app.command()
def release(ctx: typer.Context, grant_id: str) -> None:
    """End your own grant now (the certificate goes on the revocation list)."""
    _end(ctx, grant_id, "release")


@app.command()
def revoke(ctx: typer.Context, grant_id: str) -> None:
    """Admin: end a grant now (the certificate goes on the revocation list)."""
    _end(ctx, grant_id, "revoke")


@app.command()
def extend(
    ctx: typer.Context,
    grant_id: Annotated[str, typer.Argument(help="Your active grant's id.")],
    duration: Annotated[str, typer.Option("--for", help="How much longer: 30m, 1h, PT30M.")],
    ssh_key: Annotated[
        Path | None,
        typer.Option("--ssh-key", help="Write the new SSH certificate next to this public key."),
    ] = None,
) -> None:
    """Lengthen your active grant, within the role's maximum total duration (no gap in access).

    The policy in force now must approve the longer window by itself; otherwise request again.
    """
    c = _ctx(ctx)
    body = {"duration": to_iso_duration(parse_short_duration(duration))}
    data = c.client().call("POST", f"/v1/grants/{grant_id}/extend", json=body)
    written = _write_certificate({"grant": data}, ssh_key.expanduser() if ssh_key else None)
    c.emit(data, render.grant_detail)
    if written is not None:
        err.print(f"new certificate written to {written}")


@app.command("reconcile")
def reconcile_cmd(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would change; change nothing.")
    ] = False,
) -> None:
    """Admin: compare managed groups with grants; report standing privileges, remove lingering
    memberships (and standing ones in groups with mode: enforce). Exit 1 if a group could not
    be read."""
    c = _ctx(ctx)
    data = c.client().call("POST", "/v1/reconcile", json={"dry_run": dry_run})
    c.emit(data, render.reconcile)
    if data["errors"]:
        raise typer.Exit(1)


@report_app.command("standing")
def report_standing(
    ctx: typer.Context,
    since: Annotated[
        str | None, typer.Option(help="Only snapshots from this time on (RFC 3339, with offset).")
    ] = None,
) -> None:
    """Admin: standing privileges per managed group, and their count over time."""
    c = _ctx(ctx)
    params = {"since": since} if since else {}
    c.emit(c.client().call("GET", "/v1/reports/standing", params=params), render.standing)


@report_app.command("always-on")
def report_always_on(ctx: typer.Context) -> None:
    """Admin: requesters whose grants of a role cover most working hours ("always on"):
    candidates for a proper role. The definition is under ``reports.always_on``."""
    c = _ctx(ctx)
    c.emit(c.client().call("GET", "/v1/reports/always-on"), render.always_on_table)


@app.command("alerts")
def alerts_cmd(
    ctx: typer.Context,
    target: Annotated[str | None, typer.Option("--target", "-t", help="Only this target.")] = None,
    resolved: Annotated[bool, typer.Option(help="Include resolved alerts.")] = False,
) -> None:
    """Alerts Keyturn received from monitoring, with the targets they map to."""
    c = _ctx(ctx)
    params: dict[str, Any] = {"all": resolved}
    if target:
        params["target"] = target
    c.emit(c.client().call("GET", "/v1/alerts", params=params), render.alerts_table)


@policy_app.command("explain")
def policy_explain(
    ctx: typer.Context,
    role: Annotated[str, typer.Option("--role", "-r", help="Role, e.g. db-admin.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Target, e.g. db-1.")],
    requester: Annotated[
        str | None, typer.Option(help="Whose request (default: you; others need admin).")
    ] = None,
    duration: Annotated[str, typer.Option("--for", help="How long: 30m, 1h, PT1H.")] = "1h",
    justification: Annotated[str, typer.Option("--justification", "-j")] = "",
) -> None:
    """What the policy would decide now and why: the facts gathered, each rule in order with
    matched or not and the clause that decided it, the outcome. Creates nothing."""
    c = _ctx(ctx)
    body: dict[str, Any] = {
        "role": role,
        "target": target,
        "duration": to_iso_duration(parse_short_duration(duration)),
        "justification": justification,
    }
    if requester:
        body["requester"] = requester
    data = c.client().call("POST", "/v1/policy/explain", json=body)
    c.emit(data, lambda con, d: render.explanation(con, d, facts=True))


@policy_app.command("test")
def policy_test(
    ctx: typer.Context,
    cases: Annotated[Path, typer.Argument(help="Cases file (YAML), see docs/policy.md.")],
    config: ConfigOpt = None,
) -> None:
    """Run policy test cases against a configuration, without a server (for CI). Exits 1 if
    any case's decision differs from its expectation, 10 if the files are invalid."""
    from keyturn.config import load_config
    from keyturn.domain.policy import PolicyEngine
    from keyturn.policy_cases import load_cases, run_cases

    if config is None:
        raise ConfigError("no configuration: pass --config PATH or set KEYTURN_CONFIG")
    loaded = load_config(config)
    results = run_cases(
        loaded, PolicyEngine(loaded.config), load_cases(cases), base_dir=cases.parent
    )
    failed = [r for r in results if not r.passed]
    data = {
        "passed": len(results) - len(failed),
        "failed": len(failed),
        "cases": [
            {
                "name": r.name,
                "passed": r.passed,
                "outcome": str(r.decision.outcome),
                "rule": r.decision.rule,
                "mismatches": list(r.mismatches),
            }
            for r in results
        ],
    }
    c = _ctx(ctx)
    c.emit(data, render.policy_test_report)
    if failed:
        raise typer.Exit(1)


@config_app.command("reload")
def config_reload(ctx: typer.Context) -> None:
    """Admin: make the server re-read its configuration file (like ``kill -HUP``). A file that
    fails validation or its embedded policy tests is refused; the old one stays."""
    c = _ctx(ctx)
    data = c.client().call("POST", "/v1/admin/reload")
    c.emit(data, render.reload_result)
    if not data.get("applied"):
        raise typer.Exit(1)


@app.command()
def whoami(ctx: typer.Context) -> None:
    """Who the server thinks you are."""
    c = _ctx(ctx)
    c.emit(c.client().call("GET", "/v1/whoami"), render.whoami)


# --- audit ------------------------------------------------------------------------------------
@audit_app.command("verify")
def audit_verify(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Verify the store directly (no server).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="With --config: processes hashing events (default: one per CPU)."),
    ] = None,
) -> None:
    """Verify the hash chain; names the first bad sequence number. Exit 8 if broken."""
    c = _ctx(ctx)
    if config is not None:
        from keyturn.service import audit_log

        result = audit_log.verify(_load_app(config).deps, workers=workers or os.cpu_count() or 1)
        data: dict[str, Any] = {
            "ok": result.ok,
            "events": result.count,
            "first_bad_seq": result.first_bad_seq,
            "reason": result.reason,
            "head_hash": result.head_hash,
        }
    else:
        data = c.client().call("GET", "/v1/audit/verify")
    c.emit(data, render.verify)
    if not data["ok"]:
        raise typer.Exit(EXIT_AUDIT_BROKEN)


@audit_app.command("list")
def audit_list(
    ctx: typer.Context,
    after: Annotated[int, typer.Option(help="Show events after this sequence number.")] = 0,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
) -> None:
    """List audit events."""
    c = _ctx(ctx)
    data = c.client().call("GET", "/v1/audit", params={"after": after, "limit": limit})
    c.emit(data, render.audit_table)


# --- configuration and tokens -----------------------------------------------------------------
@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="Configuration file.")]) -> None:
    """Validate a configuration file: schema, references, every policy rule's CEL and the
    embedded policy tests (``policy.tests``). Exit 10 if invalid."""
    from keyturn.policy_cases import load_checked

    loaded = load_checked(path)
    cfg = loaded.config
    out.print(
        f"{path}: ok ({len(cfg.users)} users, {len(cfg.targets)} targets, {len(cfg.roles)} roles, "
        f"{len(cfg.policy.rules)} rules; sha256 {loaded.sha256[:16]}…)"
    )


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the configuration file."""
    from keyturn.config import json_schema

    out.print_json(json.dumps(json_schema()))


@token_app.command("new")
def token_new(
    user: Annotated[str, typer.Option(help="User id the token is for.")] = "USER_ID",
) -> None:
    """Print a fresh random token and the config line holding its SHA-256."""
    from keyturn.entrypoints.api.app import token_digest

    token = "kt_" + secrets.token_urlsafe(32)
    out.print(f"token (give it to {user}; it is not stored anywhere):\n  {token}")
    out.print(f"config line (under users: - id: {user}):\n  token_sha256: {token_digest(token)}")


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Keep the temporary directory.")] = False,
    window: Annotated[int, typer.Option(help="Alice's window in seconds.", min=5, max=120)] = 15,
) -> None:
    """Play the 02:45 story against real sshd servers; exit non-zero on any surprise."""
    from keyturn.entrypoints.demo import run_demo

    raise typer.Exit(run_demo(keep=keep, window_s=window))


def main() -> None:
    """Console-script entry point: run the app; map Keyturn errors to messages and exit codes."""
    from keyturn.entrypoints.logs import configure

    configure()
    try:
        app()
    except KeyturnError as exc:
        err.print(f"keyturn: error: {exc.message}")
        sys.exit(exit_code(exc))


# The break-glass, gateway and session commands live in their own modules; importing them registers
# them on ``app``.
from keyturn.entrypoints import cli_break_glass, cli_gateway, cli_sessions  # noqa: E402, F401
