"""``keyturn gateway``: the recording SSH gateway (asyncssh).

A user connects with an ordinary OpenSSH client and their Keyturn certificate, naming the
target as the SSH user name (``ssh -p 2200 db-1@gateway``; ``keyturn gateway ssh-config``
prints ``~/.ssh/config`` blocks so that ``ssh db-1`` does this). The gateway

1. accepts only a certificate signed by Keyturn's CA, in its window, whose key id and serial are
   exactly those of an active grant for that target (``service.sessions.authorize``);
2. logs in to the target itself with a fresh key and a certificate minted for this connection
   alone (``upstream_certificate_lifetime``, key id ``keyturn-gateway:grant=…:user=…``), checking
   the target's configured host key;
3. relays shell, exec, PTY, window changes, signals, breaks, EOF, exit status and both output
   streams, recording output (and input when the role says so) to an asciicast v2 file *before*
   relaying it: a recording that cannot be written ends the session (fail closed);
4. refuses and audits port forwarding (unless the role allows it), remote forwarding, agent and
   X11 forwarding, and sftp/scp unless the role's ``file_transfer`` is ``record``;
5. re-reads the grants of live connections every ``grant_check_interval`` and cuts every session
   of a grant that expired or was released or revoked (on any broker instance), telling the user.

Blocking work (store, file writes) runs in threads; asyncssh's flow control gives back-pressure:
a chunk is read from the target only after the previous one was recorded and sent on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import asyncssh
import structlog
from asyncssh.constants import EXTENDED_DATA_STDERR
from asyncssh.stream import SSHReader, SSHServerStreamSession, SSHWriter
from cryptography.hazmat.primitives.serialization import SSHCertificate, load_ssh_public_identity

from keyturn.adapters.providers.ssh_ca import SshCertificateProvider, load_or_create_ca
from keyturn.adapters.recording import RecordingWriter, recording_path
from keyturn.bootstrap import App
from keyturn.domain.errors import ConfigError, Forbidden, InvalidInput, KeyturnError
from keyturn.domain.sessions import (
    CommandLog,
    EndReason,
    Session,
    SessionKind,
    TextStream,
    cast_header,
    command_facts,
    target_from_user_name,
)
from keyturn.domain.sftp import SftpObserver
from keyturn.domain.ssh_keys import parse_user_public_key
from keyturn.service import sessions
from keyturn.service.sessions import Authorized

log = structlog.get_logger("keyturn.gateway")
READ_SIZE = 65536
#: seconds without an answer from the store after which live sessions are cut (fail closed)
WATCH_BLIND = 1.5
#: refused requests (forwarding, agent, X11 …) one connection may make before it is closed
MAX_REFUSALS = 20
#: seconds a client has to log in
LOGIN_TIMEOUT = 10
#: asyncssh internals the gateway hooks per connection (checked at start; asyncssh is pinned)
_HOOKED = (
    "_validate_openssh_certificate",
    "validate_public_key",
    "check_certificate_permission",
    "create_agent_listener",
    "attach_x11_listener",
)
_FORWARDING = frozenset({"port-forwarding", "agent-forwarding", "X11-forwarding"})


class SessionCut(Exception):
    """Raised inside a relay when its session must end now (grant ended, gateway stopping)."""

    def __init__(self, reason: EndReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Stats:
    """Counters for tests and benchmarks (bytes read from targets and recorded)."""

    upstream_bytes: int = 0
    recorded_bytes: int = 0


class Gateway:
    """The gateway's shared state: configuration, CA, host key, live connections.

    Args:
        app: the composition root (store, clock, SSH CA provider, configuration).
        monotonic: seconds for recording timestamps (injectable).
    """

    def __init__(self, app: App, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.deps = app.deps
        self.config = app.deps.config.gateway
        self.monotonic = monotonic
        provider = app.deps.providers.get("ssh")
        if not isinstance(provider, SshCertificateProvider):
            raise ConfigError("the gateway needs the ssh provider (ssh_ca)", path="ssh_ca")
        self.ssh = provider
        self.ca_key = asyncssh.import_public_key(provider.ca_public_line)
        load_or_create_ca(self.config.host_key_path, setting="gateway.host_key_path")
        self.host_key = asyncssh.read_private_key(str(self.config.host_key_path))
        self.connections: set[Connection] = set()
        self.stats = Stats()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watch_pool = ThreadPoolExecutor(1, thread_name_prefix="keyturn-gateway-watch")
        self._server: asyncssh.SSHAcceptor | None = None
        self._watcher: asyncio.Task[None] | None = None
        missing = [name for name in _HOOKED if not hasattr(asyncssh.SSHServerConnection, name)]
        if missing:
            raise ConfigError(
                f"this asyncssh version lacks {missing}; install the version in constraints.txt",
                path="gateway",
            )

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` in the background, keeping a reference until it is done."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def host_key_line(self) -> str:
        """The gateway's host key as an OpenSSH public key line (for ``known_hosts``)."""
        return str(self.host_key.export_public_key().decode().strip())

    async def start(self) -> int:
        """Listen; end sessions a crash left live; start the grant watcher. Returns the port."""
        recordings = self.config.recordings_dir
        with contextlib.suppress(OSError):
            recordings.mkdir(mode=0o700, parents=True, exist_ok=True)
        for ended in await asyncio.to_thread(sessions.recover_interrupted, self.deps):
            log.warning("session interrupted by a gateway crash ended", session_id=ended.id)
        authorized = asyncssh.import_authorized_keys(
            f'cert-authority,principals="*" {self.ssh.ca_public_line}\n'
        )
        self._server = await asyncssh.create_server(
            lambda: Connection(self),
            self.config.host,
            self.config.port,
            server_host_keys=[self.host_key],
            authorized_client_keys=authorized,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            encoding=None,
            sftp_factory=None,
            password_auth=False,
            kbdint_auth=False,
            gss_host=None,
            login_timeout=LOGIN_TIMEOUT,
            keepalive_interval=30,
        )
        self._watcher = asyncio.create_task(self._watch_grants())
        port: int = self._server.sockets[0].getsockname()[1]
        log.info("gateway listening", host=self.config.host, port=port)
        return port

    async def stop(self) -> None:
        """Stop listening; end every session (``gateway_stopped``)."""
        if self._server is not None:
            self._server.close()  # no new connections; then end the live ones, then wait
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await asyncio.gather(
            *(
                c.cut(EndReason.GATEWAY_STOPPED, "the Keyturn gateway is shutting down")
                for c in list(self.connections)
            )
        )
        if self._server is not None:
            await self._server.wait_closed()
        self._watch_pool.shutdown(wait=False)

    async def _watch_grants(self) -> None:
        """Every ``grant_check_interval``: re-read the grants of live connections (on a thread
        of its own, so nothing else can hold it up) and cut those whose grant ended. Fails
        closed: a grant past its last known ``not_after`` is cut without the store, and if the
        store has not answered for :data:`WATCH_BLIND` every connection is cut."""
        interval = self.config.grant_check_interval.total_seconds()
        loop = asyncio.get_running_loop()
        last_ok = self.monotonic()
        while True:
            await asyncio.sleep(interval)
            live = [c for c in self.connections if c.auth is not None]
            if not live:
                last_ok = self.monotonic()
                continue
            ids = {c.auth.grant.id for c in live if c.auth}
            try:
                ended, current = await asyncio.wait_for(
                    loop.run_in_executor(self._watch_pool, sessions.grant_states, self.deps, ids),
                    timeout=WATCH_BLIND,
                )
                last_ok = self.monotonic()
            except Exception as exc:  # store down, slow or broken: fail closed below
                log.error("cannot read grants of live sessions", error=str(exc)[:300])
                ended, current = {}, {}
                if self.monotonic() - last_ok >= WATCH_BLIND:
                    ended = dict.fromkeys(ids, "its state cannot be checked")
            now = self.deps.clock.now()
            for conn in live:
                auth = conn.auth
                if auth is None:
                    continue
                grant = current.get(auth.grant.id, auth.grant)
                conn.auth = dataclasses.replace(auth, grant=grant)  # extensions move not_after
                reason = ended.get(grant.id) or ("expired" if now >= grant.not_after else None)
                if reason is not None:
                    message = f"grant {grant.id} ended ({reason})"
                    self.spawn(conn.cut(EndReason.GRANT_ENDED, message))


class Connection(asyncssh.SSHServer):
    """One client connection: its certificate, grant, upstream login and sessions."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.deps = gateway.deps
        self.id = gateway.deps.new_id("con")
        self.conn: asyncssh.SSHServerConnection | None = None
        self.client = ""
        self.auth: Authorized | None = None
        self.relays: set[Relay] = set()
        self.channels = 0
        self.refused_channels = 0
        self.refusals: dict[str, int] = {}
        self._decisions: dict[tuple[str, bytes], Authorized | None] = {}
        self._upstream: asyncssh.SSHClientConnection | None = None
        self._upstream_lock = asyncio.Lock()
        self._closing = False

    # connection ---------------------------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        """Hook certificate capture and forwarding audits into this connection."""
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.client = f"{peer[0]}:{peer[1]}"
        waiting = sum(1 for c in self.gw.connections if c.auth is None)
        if waiting >= self.gw.config.max_connections:  # not yet logged in: a separate budget
            log.warning("connection refused: too many connections logging in", client=self.client)
            conn.close()
            return
        self.gw.connections.add(self)
        _instrument(conn, self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection; close its upstream login."""
        self.gw.connections.discard(self)
        if self._upstream is not None:
            self._upstream.close()
        if self.refused_channels or any(n > 1 for n in self.refusals.values()):
            self.gw.spawn(self._audit_refusal_counts())

    async def _audit_refusal_counts(self) -> None:
        grant = self.auth.grant if self.auth else None
        if self.refused_channels:
            await asyncio.to_thread(
                sessions.refused,
                self.deps,
                reason="too_many_channels",
                message=f"{self.refused_channels} session channels refused over the limit",
                grant=grant,
                details={
                    "client": self.client,
                    "limit": self.gw.config.max_channels_per_connection,
                },
            )
        repeated = {k: n for k, n in self.refusals.items() if n > 1}
        if repeated:
            await asyncio.to_thread(
                sessions.refused,
                self.deps,
                reason="repeated",
                message="requests refused more than once on this connection",
                grant=grant,
                details={"client": self.client, "counts": repeated},
            )

    # authentication -----------------------------------------------------------------------
    def begin_auth(self, username: str) -> bool:
        """Authentication is always required."""
        return True

    def public_key_auth_supported(self) -> bool:
        """Certificates only (plain keys are refused in :meth:`validate_public_key`)."""
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """A plain public key never opens a session: Keyturn certificates only."""
        return False

    def password_auth_supported(self) -> bool:
        """No passwords."""
        return False

    async def decide(self, username: str, cert: Any) -> bool:
        """Called with a certificate asyncssh verified (Keyturn's CA, window, source
        address) and a signature made with its key: is it the certificate of an active grant
        for the named target? Refusals are audited only here, so holding a copy of someone's
        certificate (public) is not enough to write events in their name."""
        key = (username, bytes(cert.public_data))
        if key not in self._decisions:
            self._decisions[key] = await self._authorize(username, cert)
        auth = self._decisions[key]
        signed_in = sum(1 for c in self.gw.connections if c.auth is not None)
        if auth is not None and signed_in >= self.gw.config.max_connections:
            log.warning("login refused: too many sessions' connections", client=self.client)
            return False
        if auth is not None:
            self.auth = auth
        return auth is not None

    async def _authorize(self, username: str, cert: Any) -> Authorized | None:
        parsed = load_ssh_public_identity(bytes(cert.export_certificate()))
        if not isinstance(parsed, SSHCertificate):
            return None
        key_id = parsed.key_id.decode("utf-8", "replace")
        serial = parsed.serial
        grant_id = sessions.grant_id_of(key_id)
        try:
            target = target_from_user_name(username)
            return await asyncio.to_thread(
                sessions.authorize,
                self.deps,
                target_name=target,
                cert_key_id=key_id,
                serial=serial,
            )
        except (Forbidden, InvalidInput) as exc:
            reason = str(exc.details.get("reason", "user_name"))
            log.warning(
                "gateway login refused",
                client=self.client,
                user_name=username[:100],
                key_id=key_id[:200],
                reason=reason,
            )
            if grant_id is not None:  # a certificate Keyturn issued: the user is known
                found = await asyncio.to_thread(sessions.current_grants, self.deps, [grant_id])
                grant = found.get(grant_id)
                await asyncio.to_thread(
                    sessions.refused,
                    self.deps,
                    reason=reason,
                    message=exc.message,
                    grant=grant,
                    details={"client": self.client, "user_name": username[:100]},
                )
            return None

    # channels -------------------------------------------------------------------------------
    def session_requested(self) -> Any:
        """A session channel: relayed and recorded, up to ``max_channels_per_connection``."""
        if self.auth is None or self._closing:
            return False
        if self.channels >= self.gw.config.max_channels_per_connection:
            self.refused_channels += 1
            return False
        self.channels += 1
        return _RelayedSession(Relay(self).run, self._channel_unused)

    def _channel_unused(self) -> None:
        """A session channel closed before it ran anything: it no longer counts."""
        self.channels -= 1

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        """``ssh -L`` / ``-W`` (direct-tcpip): through the target if the role allows it."""
        auth = self.auth
        details = {"dest_host": dest_host[:255], "dest_port": dest_port, "client": self.client}
        if auth is None or not auth.role.ssh.allow_port_forwarding:
            self._refuse_later("port_forwarding", "port forwarding is not allowed", details)
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                "keyturn: port forwarding is not allowed for this role",
            )
        self._audit_later("session.forwarded", details)
        conn = self.conn
        if conn is None:
            return False

        async def tunnel() -> Any:
            upstream = await self.upstream()
            return await conn.forward_tunneled_connection(upstream, dest_host, dest_port)

        return tunnel()

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        """``ssh -R``: never relayed (a listener on the target would escape recording)."""
        details = {"listen_host": listen_host[:255], "listen_port": listen_port}
        self._refuse_later("remote_forwarding", "remote forwarding is not allowed", details)
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        """Unix socket forwarding: refused and audited."""
        self._refuse_later("unix_forwarding", "socket forwarding is not allowed", {})
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        """Remote unix socket forwarding: refused and audited."""
        self._refuse_later("unix_forwarding", "socket forwarding is not allowed", {})
        return False

    def _refuse_later(self, reason: str, message: str, details: dict[str, Any]) -> None:
        """Audit the first refusal of each kind at once; count the rest (one summary event when
        the connection closes); close a connection that keeps asking."""
        grant = self.auth.grant if self.auth else None
        log.warning("gateway channel refused", reason=reason, client=self.client)
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        if sum(self.refusals.values()) >= MAX_REFUSALS and self.conn is not None:
            self.conn.close()
        if self.refusals[reason] > 1:
            return
        self.gw.spawn(
            asyncio.to_thread(
                sessions.refused,
                self.deps,
                reason=reason,
                message=message,
                grant=grant,
                details={"client": self.client, **details},
            )
        )

    def _audit_later(self, action: str, details: dict[str, Any]) -> None:
        auth = self.auth
        if auth is None:
            return
        self.gw.spawn(
            asyncio.to_thread(sessions.connection_event, self.deps, auth.grant, action, details)
        )

    # upstream ---------------------------------------------------------------------------------
    async def upstream(self) -> asyncssh.SSHClientConnection:
        """The gateway's own login to the target (one per client connection), made on first
        use with a fresh key and a certificate minted for this connection alone."""
        async with self._upstream_lock:
            if self._upstream is not None:
                return self._upstream
            auth = self.auth
            if auth is None:
                raise Forbidden("not authenticated")
            key = asyncssh.generate_private_key("ssh-ed25519")
            public = parse_user_public_key(key.export_public_key().decode())
            now = self.deps.clock.now()
            lifetime = self.gw.config.upstream_certificate_lifetime
            line = self.gw.ssh.session_certificate(
                auth.grant,
                public,
                serial=self.deps.new_serial(),
                connection_id=self.id,
                valid_after=now - self.deps.config.ssh_ca.clock_skew,
                valid_before=min(now + lifetime, auth.grant.not_after),
            )
            host_key = auth.target.host_key or ""
            self._upstream = await asyncio.wait_for(
                asyncssh.connect(
                    auth.target.host,
                    auth.target.port,
                    username=auth.target.login,
                    client_keys=[(key, asyncssh.import_certificate(line))],
                    known_hosts=([asyncssh.import_public_key(host_key)], [], []),
                    agent_path=None,
                    config=[],
                    preferred_auth="publickey",
                    keepalive_interval=30,
                ),
                timeout=self.gw.config.upstream_timeout.total_seconds(),
            )
            return self._upstream

    # ending -------------------------------------------------------------------------------------
    async def cut(self, reason: EndReason, message: str) -> None:
        """End every session with ``message`` to the user, then close the connection."""
        if self._closing:
            return
        self._closing = True
        log.info("gateway cutting a connection", client=self.client, why=message)
        await asyncio.gather(*(r.cut(reason, message) for r in list(self.relays)))
        if self.conn is not None:
            self.conn.close()


class _RelayedSession(SSHServerStreamSession[bytes]):
    """asyncssh's stream session, except that every subsystem reaches the relay (which
    relays or refuses it, and audits either) instead of asyncssh's own sftp server."""

    def __init__(self, handler: Callable[..., Awaitable[None]], unused: Callable[[], None]):
        super().__init__(handler)
        self._unused: Callable[[], None] | None = unused

    def subsystem_requested(self, subsystem: str) -> bool:
        """Accept the request; :meth:`Relay.run` decides."""
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """Give the channel back to the connection's count if it never ran."""
        if self._unused is not None:
            self._unused()
            self._unused = None
        super().connection_lost(exc)

    def session_started(self) -> None:
        """Hand the channel's streams to the relay, whatever the session runs."""
        chan = self._chan
        handler = self._session_factory
        if chan is None or handler is None or self._conn is None:
            return
        stdin = SSHReader[bytes](self, chan)
        stdout = SSHWriter[bytes](self, chan)
        stderr = SSHWriter[bytes](self, chan, EXTENDED_DATA_STDERR)
        self._unused = None  # the relay gives the channel back when it ends
        result = handler(stdin, stdout, stderr)
        if inspect.isawaitable(result):
            self._conn.create_task(result, stdin.logger)


def _instrument(conn: asyncssh.SSHServerConnection, owner: Connection) -> None:
    """Per-connection hooks into asyncssh (it offers no public ones for these):

    * remember the certificate a user authenticated with and let :meth:`Connection.decide`
      accept or refuse it (asyncssh checks signature, CA, window and source address first);
    * let port, agent and X11 forwarding requests reach the gateway's own checks, which audit
      every attempt (asyncssh would refuse them silently when the certificate lacks the
      extension);
    * audit agent and X11 forwarding requests, which the gateway never relays.
    """
    validate: Callable[..., Awaitable[Any]] = conn._validate_openssh_certificate
    check_cert = conn.check_certificate_permission
    agent = conn.create_agent_listener
    x11 = conn.attach_x11_listener

    check_key: Callable[..., Awaitable[bool]] = conn.validate_public_key
    seen: dict[str, Any] = {}

    async def validate_certificate(username: str, cert: Any) -> Any:
        key = await validate(username, cert)
        seen["cert"] = cert if key is not None else None
        return key

    async def validate_public_key(
        username: str, key_data: bytes, msg: bytes, signature: bytes
    ) -> bool:
        seen["cert"] = None
        if not await check_key(username, key_data, msg, signature):
            return False
        cert = seen["cert"]
        if cert is None:
            return False  # a plain key: never
        if not msg:
            return True  # only a query: the decision is taken once the client signs
        return await owner.decide(username, cert)  # signed: the user holds the private key

    def certificate_permission(permission: str) -> bool:
        return True if permission in _FORWARDING else bool(check_cert(permission))

    async def agent_listener() -> bool:
        owner._refuse_later("agent_forwarding", "agent forwarding is not relayed", {})
        return bool(await agent())

    async def x11_listener(*args: Any) -> Any:
        owner._refuse_later("x11_forwarding", "X11 forwarding is not relayed", {})
        return await x11(*args)

    setattr(conn, "_validate_openssh_certificate", validate_certificate)  # noqa: B010
    setattr(conn, "validate_public_key", validate_public_key)  # noqa: B010
    setattr(conn, "check_certificate_permission", certificate_permission)  # noqa: B010
    setattr(conn, "create_agent_listener", agent_listener)  # noqa: B010
    setattr(conn, "attach_x11_listener", x11_listener)  # noqa: B010


@dataclass(eq=False)
class Relay:
    """One session channel: recorded, relayed to the target, cut when its grant ends."""

    owner: Connection
    session: Session | None = None
    writer: RecordingWriter | None = None
    process: asyncssh.SSHClientProcess[bytes] | None = None
    stdout: asyncssh.SSHWriter[bytes] | None = None
    stderr: asyncssh.SSHWriter[bytes] | None = None
    commands: CommandLog = field(default_factory=CommandLog)
    interactive: bool = False
    _task: asyncio.Task[Any] | None = None
    _cut: SessionCut | None = None
    _record_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def deps(self) -> Any:
        return self.owner.deps

    async def run(
        self,
        stdin: asyncssh.SSHReader[bytes],
        stdout: asyncssh.SSHWriter[bytes],
        stderr: asyncssh.SSHWriter[bytes],
    ) -> None:
        """The channel's handler (asyncssh calls it when shell, exec or subsystem starts)."""
        self._task = asyncio.current_task()
        self.stdout, self.stderr = stdout, stderr
        self.owner.relays.add(self)
        chan = cast(asyncssh.SSHServerChannel[bytes], stdout.channel)
        exit_status: int | None = None
        reason = EndReason.CLOSED
        try:
            auth = self.owner.auth
            if auth is None:
                raise Forbidden("not authenticated")
            kind, command = _kind(chan)
            if not await self._allowed(auth, kind, command):
                chan.exit(1)
                return
            await self._open(auth, kind, command, chan)
            exit_status = await self._relay(stdin, stdout, stderr, kind)
        except (asyncio.CancelledError, Exception) as exc:
            reason, message = self._failure(exc)
            await self._tell(f"\r\nkeyturn: {message}; this session is closed.\r\n")
            exit_status = 255
        finally:
            self.owner.relays.discard(self)
            self.owner.channels -= 1
            finish = asyncio.ensure_future(self._finish(reason, exit_status))
            with contextlib.suppress(asyncio.CancelledError):  # a cut must not skip the end event
                await asyncio.shield(finish)
            with contextlib.suppress(OSError, asyncssh.Error):
                if not chan.is_closing():
                    chan.exit(exit_status if exit_status is not None else 255)

    def _failure(self, exc: BaseException) -> tuple[EndReason, str]:
        """Why a session ended early, and what to tell the user (logged here)."""
        client = self.owner.client
        if isinstance(exc, SessionCut):
            return exc.reason, exc.message
        if isinstance(exc, asyncio.CancelledError):
            why = self._cut or SessionCut(EndReason.GATEWAY_STOPPED, "the gateway stopped")
            return why.reason, why.message
        if isinstance(exc, KeyturnError):
            log.error("gateway session failed", error=exc.message, client=client)
            return EndReason.UPSTREAM_FAILED, exc.message
        if isinstance(exc, TimeoutError | OSError | asyncssh.Error):
            log.error("gateway upstream failed", error=str(exc)[:300], client=client)
            return (
                EndReason.UPSTREAM_FAILED,
                "the target could not be reached or closed the session",
            )
        # a bug must still end the session on the record, never leave it live
        log.error("gateway session crashed", client=client, exc_info=exc)
        return EndReason.ERROR, "the gateway failed"

    async def _allowed(self, auth: Authorized, kind: SessionKind, command: str | None) -> bool:
        """File transfer per role; unknown subsystems never. Refusals are audited."""
        chan_subsystem = command if kind is SessionKind.SFTP else None
        transfer = kind is SessionKind.SFTP or (kind is SessionKind.EXEC and _is_scp(command or ""))
        if chan_subsystem not in (None, "sftp"):
            reason, message = "subsystem", f"subsystem {chan_subsystem[:64]!r} is not relayed"
        elif transfer and auth.role.ssh.file_transfer != "record":
            reason, message = (
                "file_transfer",
                f"file transfer is not allowed for role {auth.role.name}",
            )
        else:
            return True
        await asyncio.to_thread(
            sessions.refused,
            self.deps,
            reason=reason,
            message=message,
            grant=auth.grant,
            details={"client": self.owner.client, "command": (command or "")[:500]},
        )
        await self._tell(f"keyturn: {message}\r\n")
        return False

    async def _open(
        self, auth: Authorized, kind: SessionKind, command: str | None, chan: Any
    ) -> None:
        """Recording first (refuse if it cannot be written), then the session row and event."""
        width, height, _, _ = chan.get_terminal_size()
        term = chan.get_terminal_type()
        self.interactive = term is not None
        session = sessions.new_session(
            self.deps, auth, kind=kind, command=command, client=self.owner.client
        )
        header = cast_header(
            session,
            width=width or 80,
            height=height or 24,
            term=term,
            input_recorded=auth.role.ssh.record_input,
            command=command,
        )
        path = recording_path(self.owner.gw.config.recordings_dir, session.recording)
        try:
            self.writer = await asyncio.to_thread(
                RecordingWriter, path, header, self.owner.gw.monotonic
            )
        except KeyturnError as exc:
            await asyncio.to_thread(
                sessions.refused,
                self.deps,
                reason="recording_unavailable",
                message=exc.message,
                grant=auth.grant,
                details={"client": self.owner.client},
            )
            raise Forbidden("the session cannot be recorded, so it is refused") from exc
        self.session = await asyncio.to_thread(
            sessions.open_session,
            self.deps,
            session,
            details={
                "connection": self.owner.id,
                "input_recorded": auth.role.ssh.record_input,
                **command_facts(command),
            },
        )
        upstream = await self.owner.upstream()
        if kind is SessionKind.SFTP:
            self.process = await upstream.create_process(subsystem="sftp", encoding=None)
        else:
            self.process = await upstream.create_process(
                command,
                term_type=term,
                term_size=chan.get_terminal_size() if term else None,
                request_pty="force" if term else False,
                encoding=None,
            )

    async def _relay(
        self,
        stdin: asyncssh.SSHReader[bytes],
        stdout: asyncssh.SSHWriter[bytes],
        stderr: asyncssh.SSHWriter[bytes],
        kind: SessionKind,
    ) -> int | None:
        process = self.process
        if process is None:
            raise Forbidden("no upstream session")
        sftp = SftpObserver() if kind is SessionKind.SFTP else None
        pumps = [
            asyncio.create_task(self._from_target(process.stdout, stdout, sftp)),
            asyncio.create_task(self._from_target(process.stderr, stderr, None)),
        ]
        upload = asyncio.create_task(self._to_target(stdin, process, sftp))
        tasks = [*pumps, upload]
        try:
            pending: set[asyncio.Task[None]] = set(tasks)
            while not all(p.done() for p in pumps):  # until both outputs end, or one task fails
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            result = await process.wait(check=False)
        finally:  # a failure in one direction stops the others: nothing flows unrecorded
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if result.exit_signal:
            signal_name, core, message, lang = result.exit_signal
            chan = cast(asyncssh.SSHServerChannel[bytes], stdout.channel)
            chan.exit_with_signal(signal_name, core, message, lang)
            return None
        return result.exit_status if result.exit_status is not None else 255

    async def _from_target(
        self,
        source: asyncssh.SSHReader[bytes],
        sink: asyncssh.SSHWriter[bytes],
        sftp: SftpObserver | None,
    ) -> None:
        text = TextStream()
        held = b""  # the start of a character split between reads: relayed once it is recorded
        while data := await source.read(READ_SIZE):
            self.owner.gw.stats.upstream_bytes += len(data)
            if sftp is not None:
                await self._file_events(sftp.from_server(data))
                out = data
            else:
                recorded = text.feed(data)
                out, held = _complete(held + data, text.pending)
                await self._record("o", recorded, len(out))
                if self.interactive:
                    await self._log_commands(self.commands.output(data))
            if out:
                sink.write(out)
                await sink.drain()
        if sftp is None:
            await self._record("o", text.flush(), len(held))
            if held:
                sink.write(held)
                await sink.drain()

    async def _to_target(
        self,
        stdin: asyncssh.SSHReader[bytes],
        process: asyncssh.SSHClientProcess[bytes],
        sftp: SftpObserver | None,
    ) -> None:
        auth = self.owner.auth
        record_input = bool(auth and auth.role.ssh.record_input)
        text = TextStream()
        while True:
            try:
                data = await stdin.read(READ_SIZE)
            except asyncssh.TerminalSizeChanged as exc:
                process.change_terminal_size(exc.width, exc.height, exc.pixwidth, exc.pixheight)
                await self._record("r", f"{exc.width}x{exc.height}", 0)
                continue
            except asyncssh.SignalReceived as exc:
                process.send_signal(exc.signal)
                continue
            except asyncssh.BreakReceived as exc:
                process.send_break(exc.msec)
                continue
            if not data:
                process.stdin.write_eof()
                return
            if sftp is not None:
                await self._file_events(sftp.from_client(data))
            else:
                if record_input:
                    await self._record("i", text.feed(data), 0)
                if self.interactive:
                    await self._log_commands(self.commands.input(data))
            process.stdin.write(data)
            await process.stdin.drain()

    async def _log_commands(self, lines: list[str]) -> None:
        """Audit typed lines (fed for interactive sessions only: an exec's stdin is data)."""
        if lines and self.session is not None:
            await asyncio.to_thread(
                sessions.session_event,
                self.deps,
                self.session,
                "session.command",
                [{"command": line, "best_effort": True} for line in lines],
            )

    async def _record(self, code: str, text: str, size: int) -> None:
        """Write one event before its ``size`` bytes are relayed (fail closed on error)."""
        writer = self.writer
        if text and writer is None:
            raise SessionCut(EndReason.RECORDING_FAILED, "the session can no longer be recorded")
        if writer is not None and writer.size >= self.owner.gw.config.max_recording_bytes:
            raise SessionCut(
                EndReason.RECORDING_FAILED, "the session's recording reached its size limit"
            )
        if text and writer is not None:
            async with self._record_lock:
                try:
                    await asyncio.to_thread(writer.event, code, text)
                except KeyturnError as exc:
                    log.error("recording failed; ending the session", error=exc.message)
                    raise SessionCut(
                        EndReason.RECORDING_FAILED, "the session can no longer be recorded"
                    ) from exc
        self.owner.gw.stats.recorded_bytes += size

    async def _file_events(self, events: list[dict[str, Any]]) -> None:
        if not events or self.session is None:
            return
        for event in events:
            counts = "".join(
                f" {key}={event[key]}"
                for key in ("mode", "bytes_read", "bytes_written")
                if key in event
            )
            target = f" -> {event['to']}" if "to" in event else ""
            line = f"keyturn sftp: {event['op']} {event.get('path', '')}{target}{counts}\r\n"
            await self._record("o", line, 0)
        await asyncio.to_thread(
            sessions.session_event, self.deps, self.session, "session.file", events
        )

    async def _tell(self, message: str) -> None:
        sink = self.stderr
        if sink is None:
            return
        with contextlib.suppress(OSError, asyncssh.Error, BrokenPipeError):
            sink.write(message.encode())
            await asyncio.wait_for(sink.drain(), timeout=0.5)

    async def cut(self, reason: EndReason, message: str) -> None:
        """End this session now, telling the user why."""
        self._cut = SessionCut(reason, message)
        if self.process is not None:
            self.process.close()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout=1.5)

    async def _finish(self, reason: EndReason, exit_status: int | None) -> None:
        if self.process is not None:
            self.process.close()
        digest = None
        if self.writer is not None:
            writer, self.writer = self.writer, None
            try:
                digest = await asyncio.to_thread(writer.close)
            except KeyturnError as exc:
                log.error("recording could not be closed", error=exc.message)
        if self.session is not None:
            self.session = await asyncio.to_thread(
                sessions.end_session,
                self.deps,
                self.session,
                reason=reason,
                exit_status=exit_status,
                digest=digest,
            )


def _complete(data: bytes, pending: int) -> tuple[bytes, bytes]:
    """``data`` cut before the last ``pending`` bytes (an unfinished UTF-8 character, not yet
    in the recording): what may be relayed now, and what is held until it completes."""
    return (data[: len(data) - pending], data[len(data) - pending :]) if pending else (data, b"")


def _kind(chan: Any) -> tuple[SessionKind, str | None]:
    subsystem = chan.get_subsystem()
    if subsystem is not None:
        return SessionKind.SFTP, str(subsystem)
    command = chan.get_command()
    return (SessionKind.EXEC, str(command)) if command is not None else (SessionKind.SHELL, None)


def _is_scp(command: str) -> bool:
    """``scp -t``/``scp -f`` (the legacy scp protocol runs as a remote command)."""
    words = command.split()
    return bool(words) and Path(words[0]).name == "scp"


class GatewayThread:
    """The gateway on its own event loop in a background thread (tests, the demo)."""

    def __init__(self, app: App, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.gateway = Gateway(app, monotonic)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    def start(self) -> GatewayThread:
        """Start listening; return when it accepts connections."""
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self.gateway.start(), self.loop).result(30)
        return self

    def call(self, coro: Awaitable[Any], timeout: float = 30) -> Any:
        """Run a coroutine on the gateway's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        """End every session, stop the loop and the thread."""
        with contextlib.suppress(Exception):
            self.call(self.gateway.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def serve(app: App) -> None:
    """Run the gateway until SIGINT or SIGTERM (``keyturn gateway``)."""

    async def main() -> None:
        gateway = Gateway(app)
        await gateway.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await gateway.stop()
        log.info("gateway stopped")

    asyncio.run(main())
