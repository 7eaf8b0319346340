"""``keyturn serve``: the API with the expiry worker in the same process."""

from __future__ import annotations

import signal
import threading

import structlog
import uvicorn

from keyturn import __version__
from keyturn.bootstrap import App
from keyturn.entrypoints import worker
from keyturn.entrypoints.api.app import create_app
from keyturn.service import audit_log

log = structlog.get_logger("keyturn.server")


def record_start(app: App, component: str) -> None:
    """Audit events ``server.started`` and ``config.loaded`` (with the config file's SHA-256)."""
    audit_log.record(
        app.deps,
        f"system:{component}",
        "server.started",
        {"version": __version__, "component": component},
    )
    audit_log.record(
        app.deps,
        f"system:{component}",
        "config.loaded",
        {"sha256": app.loaded.sha256, "source": app.loaded.source},
    )


def install_reload_signal(app: App) -> None:
    """``SIGHUP`` reloads the configuration (in a thread: a signal handler must not block)."""

    def reload(*_: object) -> None:
        def run() -> None:
            result = app.reload_file("system:sighup")
            if result.get("applied"):
                log.info("configuration reloaded", sha256=result.get("new_sha256"))
            else:
                log.error("configuration reload refused", reason=result.get("reason"))

        threading.Thread(target=run, name="keyturn-reload", daemon=True).start()

    signal.signal(signal.SIGHUP, reload)


class Server:
    """Uvicorn + worker thread; ``start()`` returns once the socket is listening."""

    def __init__(self, app: App, host: str, port: int, *, with_worker: bool = True) -> None:
        self.app = app
        self.stop_event = threading.Event()
        config = uvicorn.Config(
            create_app(app), host=host, port=port, log_level="warning", access_log=False
        )
        self.uvicorn = uvicorn.Server(config)
        self._threads: list[threading.Thread] = []
        self._with_worker = with_worker

    def start(self) -> None:
        """Start serving in background threads and wait until the socket is bound."""
        web = threading.Thread(target=self.uvicorn.run, name="keyturn-api", daemon=True)
        web.start()
        self._threads.append(web)
        self._start_worker()
        while not self.uvicorn.started:
            if not web.is_alive():
                raise RuntimeError("the API server failed to start (is the port free?)")
            self.stop_event.wait(0.01)

    def _start_worker(self) -> None:
        if self._with_worker:
            work = threading.Thread(
                target=worker.run,
                args=(self.app, self.stop_event),
                name="keyturn-worker",
                daemon=True,
            )
            work.start()
            self._threads.append(work)

    def stop(self) -> None:
        """Stop the worker and the API and wait for both."""
        self.stop_event.set()
        self.uvicorn.should_exit = True
        for thread in self._threads:
            thread.join(timeout=10)

    def serve_forever(self) -> None:
        """Run in this thread until interrupted (SIGINT/SIGTERM handled by uvicorn)."""
        self._start_worker()
        try:
            self.uvicorn.run()
        finally:
            self.stop()
