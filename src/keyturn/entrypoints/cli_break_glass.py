"""``keyturn break-glass …``, ``keyturn reviews``, ``keyturn audit import``, ``keyturn report
break-glass``: emergency access online and offline, and the reviews that follow it.

``break-glass ROLE`` (the default command), ``kit status``, ``reviews``, ``audit import`` and
``report break-glass`` talk to the server. ``kit create``/``kit rotate`` run on the Keyturn host
with ``--config`` (the shares are printed there and never cross a network). ``offline`` needs
nothing but the package, the configuration file and, ideally, the kit's public file.
"""

from __future__ import annotations

import getpass
import json
import os
import pwd
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from keyturn.domain.break_glass import KitInfo, ReviewVerdict, format_record_time
from keyturn.domain.durations import parse_short_duration, to_iso_duration
from keyturn.domain.errors import InvalidInput
from keyturn.entrypoints import cli_render as render
from keyturn.entrypoints.cli import (
    ConfigOpt,
    _ctx,
    _load_app,
    _write_certificate,
    app,
    audit_app,
    err,
    read_file,
    report_app,
    write_certificate,
)
from keyturn.entrypoints.cli_errors import EXIT_DENIED

MAX_SHARE_ATTEMPTS = 10
"""Refused shares (mistyped, another kit's) tolerated before ``offline`` gives up."""


class _DefaultToUse(TyperGroup):
    """``keyturn break-glass ROLE …`` means ``keyturn break-glass use ROLE …``."""

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["use", *args]
        return super().resolve_command(ctx, args)


break_glass_app = typer.Typer(
    cls=_DefaultToUse,
    help="Emergency access. 'keyturn break-glass ROLE -t TARGET -j WHY' when Keyturn is up; "
    "'keyturn break-glass offline …' with the paper kit when it is down (see the README, "
    "'When Keyturn is down').",
    no_args_is_help=True,
)
kit_app = typer.Typer(
    help="The offline break-glass kit: create, rotate, status.", no_args_is_help=True
)
reviews_app = typer.Typer(
    help="Post-incident reviews of break-glass uses (open ones by default).",
    invoke_without_command=True,
)
app.add_typer(break_glass_app, name="break-glass")
break_glass_app.add_typer(kit_app, name="kit")
app.add_typer(reviews_app, name="reviews")

JustificationOpt = Annotated[
    str,
    typer.Option("--justification", "-j", help="What is broken and what you will do (mandatory)."),
]
SshKeyOpt = Annotated[
    Path | None, typer.Option("--ssh-key", help="Public key to certify (…/id_ed25519.pub).")
]


@break_glass_app.command("use")
def use(
    ctx: typer.Context,
    role: Annotated[str, typer.Argument(help="Role, e.g. db-admin.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Target, e.g. db-1.")],
    justification: JustificationOpt,
    duration: Annotated[
        str | None, typer.Option("--for", help="How long (default and maximum: the role's cap).")
    ] = None,
    ssh_key: SshKeyOpt = None,
) -> None:
    """Break glass through Keyturn: access at once without review, for members of the role's
    break-glass group. Approvers and security are told at once; a post-incident review opens."""
    c = _ctx(ctx)
    body: dict[str, Any] = {"role": role, "target": target, "justification": justification}
    if duration is not None:
        body["duration"] = to_iso_duration(parse_short_duration(duration))
    if ssh_key is not None:
        body["ssh_public_key"] = read_file(ssh_key, "--ssh-key")
    data = c.client().call("POST", "/v1/break-glass", json=body)
    written = _write_certificate(data["request"], ssh_key.expanduser() if ssh_key else None)
    c.emit(data, lambda con, d: render.break_glass_result(con, d, cert_path=written))
    if data["request"]["status"] == "denied":
        raise typer.Exit(EXIT_DENIED)


# --- offline ----------------------------------------------------------------------------------
def _read_share(prompt: str) -> str | None:
    """One share: without echo from a terminal; a line from standard input otherwise (scripts,
    the demo). None at end of input."""
    if sys.stdin.isatty():
        try:
            return getpass.getpass(prompt)
        except EOFError:
            return None
    err.print(prompt, end="")
    line = sys.stdin.readline()
    err.print("")
    return None if line == "" else line


def _kit_file(path: Path | None) -> Any:
    from keyturn.domain.break_glass import kit_from_public_data

    if path is None:
        return None
    try:
        data = json.loads(read_file(path, "--kit"))
    except ValueError as exc:
        raise InvalidInput(f"--kit {path}: not a kit file ({exc})", field="kit") from exc
    return kit_from_public_data(data)


@break_glass_app.command("offline")
def offline(
    ctx: typer.Context,
    role: Annotated[str, typer.Option("--role", "-r", help="Role, e.g. db-admin.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Target, e.g. db-1.")],
    ssh_key: Annotated[Path, typer.Option("--ssh-key", help="Your public key (…/id_ed25519.pub).")],
    justification: JustificationOpt,
    name: Annotated[str, typer.Option("--name", "-n", help="Your user id (goes in the record).")],
    config: ConfigOpt = None,
    kit: Annotated[
        Path | None,
        typer.Option(
            "--kit",
            help="The kit's public file (break_glass.kit_path): checks the shares belong to it.",
        ),
    ] = None,
    duration: Annotated[
        str | None, typer.Option("--for", help="How long (default and maximum: the role's cap).")
    ] = None,
    record_out: Annotated[
        Path | None, typer.Option("--out", help="Record file (default ./break-glass-<id>.json).")
    ] = None,
    reveal_password: Annotated[
        bool,
        typer.Option(
            "--reveal-directory-password",
            help="Also open the emergency directory account's password sealed in the kit.",
        ),
    ] = False,
) -> None:
    """Keyturn is down: rebuild the break-glass key from the custodians' shares (typed one by
    one, not echoed) and sign a short certificate and a record. Needs no server, database or
    network. Afterwards: 'keyturn audit import RECORD' and 'keyturn break-glass kit rotate'."""
    from keyturn.adapters.break_glass_kit import SEALED_ACCOUNT, ShareCollector, unseal
    from keyturn.adapters.clock import SystemClock
    from keyturn.break_glass_offline import OfflineAsk, check_ask, sign
    from keyturn.config import load_config

    if config is None:
        raise InvalidInput(
            "pass --config PATH (the Keyturn configuration file) or set KEYTURN_CONFIG"
        )
    settings = load_config(config).config
    kit_info = _kit_file(kit)
    public_key = read_file(ssh_key, "--ssh-key")
    checked = check_ask(
        settings,
        OfflineAsk(
            role=role,
            target=target,
            name=name,
            justification=justification,
            ssh_public_key=public_key,
            duration=parse_short_duration(duration) if duration is not None else None,
        ),
    )
    if reveal_password and (kit_info is None or SEALED_ACCOUNT not in kit_info.sealed):
        raise InvalidInput("--reveal-directory-password needs --kit with a sealed password")
    if record_out is not None:
        record_out = record_out.expanduser()
        _check_new_file(record_out)
    collector = ShareCollector(kit_info)
    needed = collector.threshold
    err.print(
        f"break-glass: {checked.role.name} on {checked.target.name} for "
        f"{to_iso_duration(checked.duration)} as {checked.name}. "
        f"Custodians: type your share{f's ({needed} needed)' if needed else 's'}; "
        "end with Ctrl-D."
    )
    refused = 0
    while not collector.complete and refused < MAX_SHARE_ATTEMPTS:
        text = _read_share(f"share {collector.count + 1}: ")
        if text is None:
            break
        if not text.strip():
            continue
        try:
            err.print(collector.add(text))
        except InvalidInput as exc:
            refused += 1
            err.print(f"refused: {exc.message}")
    master = collector.master_secret()
    now = SystemClock().now()
    password = unseal(master, kit_info, SEALED_ACCOUNT) if reveal_password else None
    opened = (SEALED_ACCOUNT,) if password is not None else ()
    result = sign(settings, checked, master, now=now, kit=kit_info, sealed_opened=opened)
    record_path = record_out or Path(f"break-glass-{result.record_id}.json")
    cert_path = _write_outputs(record_path, result.record_text, ssh_key, result.certificate)
    data = {
        "record_id": result.record_id,
        "kit_id": result.kit_id,
        "certificate_path": str(cert_path),
        "record_path": str(record_path),
        "serial": str(result.serial),
        "key_id": result.key_id,
        "principals": result.principals,
        "login": checked.target.login,
        "host": checked.target.host,
        "port": checked.target.port,
        "not_after": format_record_time(result.not_after),
    }
    if password is not None and kit_info is not None:
        data["directory_account"] = kit_info.sealed[SEALED_ACCOUNT]["dn"]
        data["directory_password"] = password
    _ctx(ctx).emit(data, _offline_next_steps)


def _write_outputs(record_path: Path, record: str, ssh_key: Path, certificate: str) -> Path:
    """Write the record, then the certificate (next to ``ssh_key``): a certificate is never
    left without its record. Returns the certificate's path.

    Raises:
        InvalidInput: either file cannot be written (saying what was written).
    """
    try:
        _write_new(record_path, record)
    except OSError as exc:
        raise InvalidInput(
            f"cannot write the record {record_path} ({exc.strerror or exc}); no certificate was "
            "written: run again with --out PATH in a writable directory",
            field="out",
        ) from exc
    try:
        return write_certificate(ssh_key.expanduser(), certificate)
    except OSError as exc:
        raise InvalidInput(
            f"the record {record_path} was written (import it when Keyturn is back), but the "
            f"certificate could not be written next to {ssh_key} ({exc.strerror or exc})",
            field="ssh_key",
        ) from exc


def _check_new_file(path: Path) -> None:
    """Refuse, before any share is asked for, a record destination that cannot be created."""
    if path.exists() or path.is_symlink():
        raise InvalidInput(
            f"--out {path}: the file exists; a record never replaces one", field="out"
        )
    if not path.parent.is_dir():
        raise InvalidInput(f"--out {path}: there is no directory {path.parent}", field="out")


def _write_new(path: Path, text: str) -> None:
    """Write ``text`` to a new file (never over an existing one)."""
    with open(path, "x", encoding="utf-8") as handle:
        handle.write(text)


def _offline_next_steps(con: Any, d: dict[str, Any]) -> None:
    con.print(
        f"certificate  {d['certificate_path']}  (serial {d['serial']}, until {d['not_after']})"
    )
    con.print(f"record       {d['record_path']}  (id {d['record_id']}, kit {d['kit_id']})")
    if d.get("directory_password"):
        con.print(f"directory    {d['directory_account']}  password: {d['directory_password']}")
    con.print("")
    con.print("Next:")
    con.print(
        f"  1. Log in: ssh -o CertificateFile={d['certificate_path']} -p {d['port']} "
        f"{d['login']}@{d['host']}"
    )
    con.print(
        "  2. Keep the record file. It is your account of this access; anyone may read it, no one "
        "can change it unnoticed."
    )
    con.print("  3. When Keyturn is back, an admin runs: keyturn audit import " + d["record_path"])
    con.print("     (it opens the post-incident review and tells approvers and security).")
    con.print(
        "  4. The kit must now be rotated: an admin runs 'keyturn break-glass kit rotate' and "
        "hands out new shares; targets that refresh their CA lines then stop trusting the old "
        "kit."
    )


# --- the kit ----------------------------------------------------------------------------------
def _make_kit(
    ctx: typer.Context,
    config: Path | None,
    *,
    threshold: int | None,
    shares: int | None,
    rotate: bool,
) -> None:
    from keyturn.service import break_glass

    wired = _load_app(config)
    kit_path = wired.deps.config.break_glass.kit_path
    try:
        current = break_glass.kit_in_force(wired.deps)
        # "is None", not "or": an explicit 0 must reach create_kit and be refused there.
        kit, mnemonics = break_glass.create_kit(
            wired.deps,
            f"local:{pwd.getpwuid(os.getuid()).pw_name}",
            threshold=threshold if threshold is not None else (current.threshold if current else 2),
            shares=shares if shares is not None else (current.shares if current else 5),
            rotate=rotate,
            publish=lambda kit: _write_public(kit_path, kit),
        )
    finally:
        wired.close()
    data = {"kit": kit.public_data(), "shares": mnemonics, "kit_path": str(kit_path)}
    _ctx(ctx).emit(data, render.kit_shares)


def _write_public(path: Path, kit: KitInfo) -> None:
    """Atomically replace the kit file ``path`` (mode 0644: it holds no secret). Called before
    the kit is stored, so a kit is never in force without its file.

    Raises:
        InvalidInput: the file cannot be written (nothing was stored).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kit-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(kit.public_data(), indent=2) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise InvalidInput(
            f"break_glass.kit_path: cannot write {path} ({exc.strerror or exc}); no kit was made",
            field="kit_path",
        ) from exc


SharesOpt = Annotated[int | None, typer.Option(help="How many shares (custodians), at most 16.")]
ThresholdOpt = Annotated[
    int | None,
    typer.Option(help="How many shares rebuild the key (≥ 2, unless there is a single share)."),
]


@kit_app.command("create")
def kit_create(
    ctx: typer.Context,
    config: ConfigOpt = None,
    shares: SharesOpt = 5,
    threshold: ThresholdOpt = 2,
) -> None:
    """On the Keyturn host: make the offline kit and print its shares once (never stored)."""
    _make_kit(ctx, config, threshold=threshold, shares=shares, rotate=False)


@kit_app.command("rotate")
def kit_rotate(
    ctx: typer.Context,
    config: ConfigOpt = None,
    shares: SharesOpt = None,
    threshold: ThresholdOpt = None,
) -> None:
    """On the Keyturn host: replace the kit (after any use). The old key's CA line is no longer
    served and a sealed directory password is changed; new shares are printed once."""
    _make_kit(ctx, config, threshold=threshold, shares=shares, rotate=True)


@kit_app.command("status")
def kit_status(ctx: typer.Context) -> None:
    """The kit in force: ready, or spent (used and awaiting rotation)."""
    c = _ctx(ctx)
    c.emit(c.client().call("GET", "/v1/break-glass/kit"), render.kit_status)


# --- reviews, import, report ------------------------------------------------------------------
@reviews_app.callback()
def reviews_list(
    ctx: typer.Context,
    all_reviews: Annotated[bool, typer.Option("--all", help="Closed ones too.")] = False,
) -> None:
    """List post-incident reviews you can see (open ones unless --all)."""
    if ctx.invoked_subcommand is None:
        c = _ctx(ctx)
        data = c.client().call("GET", "/v1/break-glass/reviews", params={"all": all_reviews})
        c.emit(data, render.reviews_table)


@reviews_app.command("close")
def reviews_close(
    ctx: typer.Context,
    review_id: Annotated[str, typer.Argument(help="Review id (pir_…).")],
    verdict: Annotated[ReviewVerdict, typer.Option(help="justified or unjustified.")],
    comment: Annotated[str, typer.Option("--comment", "-m", help="What you found (mandatory).")],
) -> None:
    """Close a post-incident review (not your own break-glass use)."""
    c = _ctx(ctx)
    data = c.client().call(
        "POST",
        f"/v1/break-glass/reviews/{review_id}/close",
        json={"verdict": str(verdict), "comment": comment},
    )
    c.emit(data, render.review_detail)


@audit_app.command("import")
def audit_import(
    ctx: typer.Context,
    record: Annotated[Path, typer.Argument(help="The record file 'break-glass offline' wrote.")],
) -> None:
    """Admin: import an offline break-glass record into the audit chain (verified against the
    kit's key; once only) and open its post-incident review."""
    c = _ctx(ctx)
    raw = read_file(record, "RECORD").encode()
    data = c.client().call(
        "POST",
        "/v1/break-glass/records",
        content=raw,
        headers={"Content-Type": "application/json"},
    )
    c.emit(data, render.review_detail)


@report_app.command("break-glass")
def report_break_glass(ctx: typer.Context) -> None:
    """Admin: every break-glass use with its review (overdue ones flagged) and the kit's state."""
    c = _ctx(ctx)
    c.emit(c.client().call("GET", "/v1/reports/break-glass"), render.break_glass_report)
