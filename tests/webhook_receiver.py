"""A real webhook endpoint on a loopback port, for notifier tests: it records every POST."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar


class Receiver(ThreadingHTTPServer):
    """Records ``(path, headers, JSON body)`` of every POST (thread-safe)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._received: list[tuple[str, dict[str, str], Any]] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/hooks/keyturn"

    def record(self, path: str, headers: dict[str, str], body: Any) -> None:
        """Keep one POST (called by the handler thread)."""
        with self._lock:
            self._received.append((path, headers, body))

    @property
    def received(self) -> list[tuple[str, dict[str, str], Any]]:
        """Every POST so far, oldest first."""
        with self._lock:
            return list(self._received)

    def payloads(self) -> list[Any]:
        """The JSON bodies received so far."""
        return [body for _, _, body in self.received]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.record(self.path, dict(self.headers), json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no access log on stderr."""


R = TypeVar("R", bound=Receiver)


@contextmanager
def serving(receiver: R) -> Iterator[R]:
    """Serve ``receiver`` in a background thread until the block ends."""
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.shutdown()
        receiver.server_close()
        thread.join(timeout=5)
