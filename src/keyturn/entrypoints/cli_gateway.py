"""``keyturn gateway``: run the recording SSH gateway; print the ssh configuration for users."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from keyturn.adapters.providers.ssh_ca import ca_public_line, load_or_create_ca
from keyturn.config import KeyturnConfig
from keyturn.entrypoints.cli import ConfigOpt, _load_app, app, err, out

#: the name users' ``known_hosts`` and ``ssh_config`` know the gateway by (``HostKeyAlias``)
HOST_KEY_ALIAS = "keyturn-gateway"


class _DefaultToRun(TyperGroup):
    """``keyturn gateway -c FILE`` means ``keyturn gateway run -c FILE``."""

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        if not args or args[0] not in self.commands:
            args = ["run", *args]
        return super().resolve_command(ctx, args)


gateway_app = typer.Typer(
    cls=_DefaultToRun,
    help="The recording SSH gateway: 'keyturn gateway -c FILE' runs it; "
    "'keyturn gateway ssh-config -c FILE' prints what users put in ~/.ssh (see docs/gateway.md).",
)
app.add_typer(gateway_app, name="gateway")


@gateway_app.command("run")
def run_cmd(config: ConfigOpt = None) -> None:
    """Run the gateway until SIGTERM or SIGINT: users ``ssh -p PORT TARGET@HOST`` with their
    Keyturn certificate; every session is recorded and ends when its grant ends."""
    from keyturn.entrypoints import gateway
    from keyturn.entrypoints.server import record_start

    wired = _load_app(config)
    record_start(wired, "gateway")
    gateway.serve(wired)


@gateway_app.command("ssh-config")
def ssh_config_cmd(
    config: ConfigOpt = None,
    identity: Annotated[
        str,
        typer.Option(help="The private key users request certificates for (as written in ssh)."),
    ] = "~/.ssh/id_ed25519",
) -> None:
    """Print a ``known_hosts`` line and one ``~/.ssh/config`` block per target, so that
    ``ssh TARGET`` goes through the gateway with the Keyturn certificate."""
    wired = _load_app(config)
    cfg: KeyturnConfig = wired.deps.config
    key = load_or_create_ca(cfg.gateway.host_key_path, setting="gateway.host_key_path")
    host_line = " ".join(ca_public_line(key).split()[:2])
    out.print(render_ssh_config(cfg, host_line, identity), end="")
    if not [t for t in cfg.targets if t.host_key]:
        err.print("keyturn: no target has a host_key; the gateway will refuse every session")


def render_ssh_config(config: KeyturnConfig, host_key_line: str, identity: str) -> str:
    """The text ``keyturn gateway ssh-config`` prints (targets without a host key are listed
    as unreachable through the gateway)."""
    gw = config.gateway
    address = gw.public_host or gw.host
    lines = [
        "# ~/.ssh/known_hosts",
        f"{HOST_KEY_ALIAS} {host_key_line}",
        "",
        "# ~/.ssh/config",
    ]
    for target in config.targets:
        if target.host_key is None:
            lines.append(f"# {target.name}: no host_key configured; not reachable via the gateway")
            continue
        lines += [
            f"Host {target.name}",
            f"  HostName {address}",
            f"  Port {gw.port}",
            f"  User {target.name}",
            f"  HostKeyAlias {HOST_KEY_ALIAS}",
            f"  IdentityFile {identity}",
            f"  CertificateFile {identity}-cert.pub",
            "  IdentitiesOnly yes",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"
