"""Session recordings on disk: asciicast v2 files written as the session runs.

Each event line is written and flushed to the operating system before the gateway relays the
data it records, so a gateway crash keeps everything recorded so far, and a recording that
cannot be written stops the session (fail closed). The SHA-256 of the bytes written is kept as
they are written; :func:`file_digest` re-reads a file for ``keyturn audit verify``.
Format: https://docs.asciinema.org/manual/asciicast/v2/ (see ``keyturn.domain.sessions``).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from keyturn.domain.errors import InvalidInput, ProviderError
from keyturn.domain.sessions import cast_event

CHUNK = 1024 * 1024


class RecordingWriter:
    """One recording file, created new (mode 0600, directory 0700) with its header line.

    Args:
        path: the file to create; it must not exist.
        header: the asciicast header line (no newline).
        monotonic: seconds from a monotonic clock (event times are relative to the first call).

    Raises:
        ProviderError: the file cannot be created or written (not retryable: refuse the session).
    """

    def __init__(self, path: Path, header: str, monotonic: Callable[[], float]) -> None:
        self.path = path
        self._monotonic = monotonic
        self._start = monotonic()
        self._sha = hashlib.sha256()
        self._lock = threading.Lock()  # a cut session's last write may race its close
        self._closed = False
        self.size = 0
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except OSError as exc:
            raise ProviderError(
                f"cannot create the recording {path}: {exc.strerror}", retryable=False
            ) from exc
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._write(header)

    def event(self, code: str, data: str) -> None:
        """Append ``[elapsed, code, data]`` and hand it to the operating system.

        Raises:
            ProviderError: the write failed (disk full, file system gone).
        """
        self._write(cast_event(self._monotonic() - self._start, code, data))

    def _write(self, line: str) -> None:
        data = (line + "\n").encode()
        with self._lock:
            if self._closed:
                raise ProviderError(f"the recording {self.path} is closed", retryable=False)
            self._append(data)

    def _append(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                written = self._file.write(view)
                view = view[written or 0 :]
        except OSError as exc:
            raise ProviderError(
                f"cannot write the recording {self.path}: {exc.strerror}", retryable=False
            ) from exc
        self._sha.update(data)
        self.size += len(data)

    def close(self) -> tuple[str, int]:
        """Close the file; return its SHA-256 (hex) and size in bytes (later writes fail)."""
        with self._lock:
            self._closed = True
            return self._close()

    def _close(self) -> tuple[str, int]:
        try:
            self._file.close()
        except OSError as exc:
            raise ProviderError(
                f"cannot close the recording {self.path}: {exc.strerror}", retryable=False
            ) from exc
        return self._sha.hexdigest(), self.size


def recording_path(recordings_dir: Path, relative: str) -> Path:
    """The file of a recording named relative to ``recordings_dir``.

    Raises:
        InvalidInput: ``relative`` would leave the directory.
    """
    base = recordings_dir.resolve()
    path = (base / relative).resolve()
    if not relative or path.parent != base:
        raise InvalidInput(f"recording name {relative!r} is not a file in the recordings directory")
    return path


def file_digest(path: Path) -> tuple[str, int] | None:
    """SHA-256 (hex) and size of a file, or None when it cannot be read."""
    sha = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                sha.update(chunk)
                size += len(chunk)
    except OSError:
        return None
    return sha.hexdigest(), size
