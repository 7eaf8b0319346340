"""Watching an sftp session pass through the gateway: file names and byte counts.

The gateway relays the sftp subsystem byte for byte and feeds both directions here. Packets are
those of SFTP version 3 (draft-ietf-secsh-filexfer-02 §3 to §7, what OpenSSH speaks): ``uint32
length, byte type, uint32 request-id, …``; strings are ``uint32 length`` + bytes. Only what
names a file or moves its bytes is decoded; everything else passes unread.

Pure: no I/O. A stream that does not parse raises :class:`~keyturn.domain.errors.ProviderError`
so the gateway ends the session rather than relay what it cannot record.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from keyturn.domain.errors import ProviderError

MAX_PACKET = 1024 * 1024  # OpenSSH's sftp-server refuses packets above 256 KiB
# client → server (draft-02 §3)
OPEN, CLOSE, READ, WRITE = 3, 4, 5, 6
OPENDIR, REMOVE, MKDIR, RMDIR, RENAME, SYMLINK = 11, 13, 14, 15, 18, 20
# server → client
STATUS, HANDLE, DATA = 101, 102, 103
_PFLAGS = ((0x01, "read"), (0x02, "write"), (0x04, "append"), (0x08, "create"), (0x10, "truncate"))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def uint32(self) -> int:
        (value,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def uint64(self) -> int:
        (value,) = struct.unpack_from(">Q", self.data, self.pos)
        self.pos += 8
        return int(value)

    def string(self) -> bytes:
        size = self.uint32()
        if self.pos + size > len(self.data):
            raise struct.error("string past the end of the packet")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")[:4096]


@dataclass
class _OpenFile:
    path: str
    mode: str
    read: int = 0
    written: int = 0


@dataclass
class SftpObserver:
    """Feed each direction's bytes; get back file events as dicts for ``session.file``:
    ``{"op": "open"|"close"|"remove"|"rename"|"mkdir"|"rmdir"|"symlink", "path": …}``;
    ``close`` carries ``bytes_read`` and ``bytes_written``."""

    _client: bytearray = field(default_factory=bytearray)
    _server: bytearray = field(default_factory=bytearray)
    _opening: dict[int, tuple[str, str]] = field(default_factory=dict)
    _reading: dict[int, bytes] = field(default_factory=dict)
    _files: dict[bytes, _OpenFile] = field(default_factory=dict)

    def from_client(self, data: bytes) -> list[dict[str, Any]]:
        """Requests: opens, writes, closes, removals, renames."""
        return [e for p in _packets(self._client, data) for e in self._request(p)]

    def from_server(self, data: bytes) -> list[dict[str, Any]]:
        """Responses: the handle an open got, the data a read returned."""
        return [e for p in _packets(self._server, data) for e in self._response(p)]

    def _request(self, packet: bytes) -> list[dict[str, Any]]:
        kind, r = packet[0], _Reader(packet[1:])
        try:
            if kind in (OPEN, CLOSE, READ, WRITE, REMOVE, MKDIR, RMDIR, RENAME, SYMLINK):
                request_id = r.uint32()
            if kind == OPEN:
                path, flags = _name(r.string()), r.uint32()
                mode = "+".join(n for bit, n in _PFLAGS if flags & bit) or "read"
                self._opening[request_id] = (path, mode)
            elif kind == READ:
                self._reading[request_id] = r.string()
            elif kind == WRITE:
                handle = r.string()
                r.uint64()
                size = r.uint32()
                if r.pos + size != len(r.data):
                    raise struct.error("a write's data does not fill its packet")
                if handle in self._files:
                    self._files[handle].written += size
            elif kind == CLOSE:
                opened = self._files.pop(r.string(), None)
                if opened is not None:
                    return [
                        {
                            "op": "close",
                            "path": opened.path,
                            "mode": opened.mode,
                            "bytes_read": opened.read,
                            "bytes_written": opened.written,
                        }
                    ]
            elif kind in (REMOVE, MKDIR, RMDIR):
                op = {REMOVE: "remove", MKDIR: "mkdir", RMDIR: "rmdir"}[kind]
                return [{"op": op, "path": _name(r.string())}]
            elif kind in (RENAME, SYMLINK):
                first, second = _name(r.string()), _name(r.string())
                op = "rename" if kind == RENAME else "symlink"
                return [{"op": op, "path": first, "to": second}]
        except struct.error as exc:
            raise ProviderError("an sftp request did not parse", retryable=False) from exc
        return []

    def _response(self, packet: bytes) -> list[dict[str, Any]]:
        kind, r = packet[0], _Reader(packet[1:])
        try:
            if kind == HANDLE:
                request_id, handle = r.uint32(), r.string()
                opening = self._opening.pop(request_id, None)
                if opening is not None:
                    self._files[handle] = _OpenFile(*opening)
                    return [{"op": "open", "path": opening[0], "mode": opening[1]}]
            elif kind == DATA:
                request_id = r.uint32()
                size = r.uint32()
                if r.pos + size > len(r.data):
                    raise struct.error("data longer than its packet")
                handle = self._reading.pop(request_id, b"")
                if handle in self._files:
                    self._files[handle].read += size
            elif kind == STATUS:
                request_id = r.uint32()
                self._opening.pop(request_id, None)
                self._reading.pop(request_id, None)
        except struct.error as exc:
            raise ProviderError("an sftp response did not parse", retryable=False) from exc
        return []


def _packets(buffer: bytearray, data: bytes) -> list[bytes]:
    """Append ``data``; cut off every complete packet (type byte onwards)."""
    buffer.extend(data)
    out = []
    while len(buffer) >= 4:
        (size,) = struct.unpack_from(">I", buffer, 0)
        if size == 0 or size > MAX_PACKET:
            raise ProviderError(f"an sftp packet of {size} bytes is not plausible", retryable=False)
        if len(buffer) < 4 + size:
            break
        out.append(bytes(buffer[4 : 4 + size]))
        del buffer[: 4 + size]
    return out
