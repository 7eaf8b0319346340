"""The sftp observer reads SFTP v3 packets (draft-ietf-secsh-filexfer-02) built here with
``struct`` and reports file names and byte counts; garbage ends the session."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from keyturn.domain.errors import ProviderError
from keyturn.domain.sftp import (
    CLOSE,
    DATA,
    HANDLE,
    MAX_PACKET,
    MKDIR,
    OPEN,
    READ,
    REMOVE,
    RENAME,
    STATUS,
    WRITE,
    SftpObserver,
)

PF_READ, PF_WRITE, PF_CREAT, PF_TRUNC = 0x01, 0x02, 0x08, 0x10


def string(value: bytes | str) -> bytes:
    """An SFTP string: uint32 length, then the bytes."""
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack(">I", len(raw)) + raw


def packet(kind: int, request_id: int, body: bytes = b"") -> bytes:
    """uint32 length, byte type, uint32 request id, body."""
    payload = struct.pack(">BI", kind, request_id) + body
    return struct.pack(">I", len(payload)) + payload


def open_(request_id: int, path: str, flags: int) -> bytes:
    """SSH_FXP_OPEN with empty attributes."""
    return packet(OPEN, request_id, string(path) + struct.pack(">II", flags, 0))


def handle(request_id: int, value: bytes) -> bytes:
    """SSH_FXP_HANDLE."""
    return packet(HANDLE, request_id, string(value))


def write(request_id: int, value: bytes, offset: int, data: bytes) -> bytes:
    """SSH_FXP_WRITE."""
    return packet(WRITE, request_id, string(value) + struct.pack(">Q", offset) + string(data))


def read(request_id: int, value: bytes, offset: int, length: int) -> bytes:
    """SSH_FXP_READ."""
    return packet(READ, request_id, string(value) + struct.pack(">QI", offset, length))


def data(request_id: int, payload: bytes) -> bytes:
    """SSH_FXP_DATA."""
    return packet(DATA, request_id, string(payload))


def close(request_id: int, value: bytes) -> bytes:
    """SSH_FXP_CLOSE."""
    return packet(CLOSE, request_id, string(value))


def status(request_id: int, code: int) -> bytes:
    """SSH_FXP_STATUS."""
    return packet(STATUS, request_id, struct.pack(">I", code) + string("msg") + string(""))


UPLOAD_OPEN = open_(1, "/etc/app.conf", PF_WRITE | PF_CREAT | PF_TRUNC)
UPLOAD_HANDLE = handle(1, b"h1")
UPLOAD_TAIL = write(2, b"h1", 0, b"x" * 1000) + write(3, b"h1", 1000, b"y" * 24) + close(4, b"h1")


def test_upload_reports_open_then_close_with_bytes_written() -> None:
    """OPEN, HANDLE, two WRITEs, CLOSE: an open event, then a close with 1,024 bytes written."""
    observer = SftpObserver()
    assert observer.from_client(UPLOAD_OPEN) == []
    assert observer.from_server(UPLOAD_HANDLE) == [
        {"op": "open", "path": "/etc/app.conf", "mode": "write+create+truncate"}
    ]
    assert observer.from_client(UPLOAD_TAIL) == [
        {
            "op": "close",
            "path": "/etc/app.conf",
            "mode": "write+create+truncate",
            "bytes_read": 0,
            "bytes_written": 1024,
        }
    ]


def test_download_counts_bytes_read_from_data_replies() -> None:
    """READ requests answered by DATA count the bytes returned, not the bytes asked for."""
    observer = SftpObserver()
    observer.from_client(open_(1, "/var/log/syslog", PF_READ))
    observer.from_server(handle(1, b"h"))
    observer.from_client(read(2, b"h", 0, 32768) + read(3, b"h", 32768, 32768))
    observer.from_server(data(2, b"a" * 32768) + data(3, b"b" * 100))
    observer.from_client(read(4, b"h", 32868, 32768))
    observer.from_server(status(4, 1))  # EOF
    [event] = observer.from_client(close(5, b"h"))
    assert event == {
        "op": "close",
        "path": "/var/log/syslog",
        "mode": "read",
        "bytes_read": 32868,
        "bytes_written": 0,
    }


def test_failed_open_reports_nothing() -> None:
    """An OPEN answered by STATUS (permission denied) opens no file."""
    observer = SftpObserver()
    observer.from_client(open_(1, "/root/secret", PF_READ))
    assert observer.from_server(status(1, 3)) == []
    assert observer.from_client(close(2, b"h")) == []


@pytest.mark.parametrize(
    ("request_bytes", "event"),
    [
        (packet(REMOVE, 7, string("/tmp/a")), {"op": "remove", "path": "/tmp/a"}),
        (
            packet(RENAME, 8, string("/tmp/a") + string("/tmp/b")),
            {"op": "rename", "path": "/tmp/a", "to": "/tmp/b"},
        ),
        (
            packet(MKDIR, 9, string("/tmp/d") + struct.pack(">I", 0)),
            {"op": "mkdir", "path": "/tmp/d"},
        ),
    ],
    ids=["remove", "rename", "mkdir"],
)
def test_name_changes_are_reported(request_bytes: bytes, event: dict[str, Any]) -> None:
    """REMOVE, RENAME and MKDIR each give one event naming the paths."""
    assert SftpObserver().from_client(request_bytes) == [event]


def test_other_requests_pass_unread() -> None:
    """Requests that name no file change (here SSH_FXP_INIT, STAT) give no event."""
    init = struct.pack(">IBI", 5, 1, 3)
    stat = packet(17, 2, string("/etc"))
    assert SftpObserver().from_client(init + stat) == []


@pytest.mark.parametrize("size", [0, MAX_PACKET + 1, 0xFFFFFFFF])
def test_implausible_packet_length_raises(size: int) -> None:
    """A length of 0 or above 1 MiB is garbage: the gateway must end the session."""
    with pytest.raises(ProviderError):
        SftpObserver().from_client(struct.pack(">I", size) + b"\x03")
    with pytest.raises(ProviderError):
        SftpObserver().from_server(struct.pack(">I", size) + b"\x66")


def test_string_past_the_end_of_its_packet_raises() -> None:
    """A path whose declared length runs past its packet does not parse."""
    body = struct.pack(">BI", REMOVE, 1) + struct.pack(">I", 100) + b"abc"
    with pytest.raises(ProviderError):
        SftpObserver().from_client(struct.pack(">I", len(body)) + body)


def test_handle_reply_cut_short_raises() -> None:
    """A HANDLE reply without its handle string does not parse."""
    body = struct.pack(">BI", HANDLE, 1)
    with pytest.raises(ProviderError):
        SftpObserver().from_server(struct.pack(">I", len(body)) + body)


def test_partial_packet_waits_for_the_rest() -> None:
    """A packet cut anywhere gives nothing until its last byte arrives."""
    removal = packet(REMOVE, 7, string("/tmp/a"))
    observer = SftpObserver()
    assert observer.from_client(removal[:-1]) == []
    assert observer.from_client(removal[-1:]) == [{"op": "remove", "path": "/tmp/a"}]


def _upload_events(cut: int) -> list[dict[str, Any]]:
    """The upload with the client's bytes cut at ``cut`` (open and the rest each split)."""
    observer = SftpObserver()
    at = cut % (len(UPLOAD_OPEN) + 1)
    events = observer.from_client(UPLOAD_OPEN[:at]) + observer.from_client(UPLOAD_OPEN[at:])
    events += observer.from_server(UPLOAD_HANDLE)
    events += observer.from_client(UPLOAD_TAIL[:cut]) + observer.from_client(UPLOAD_TAIL[cut:])
    return events


def test_split_at_every_byte_boundary_gives_the_same_events() -> None:
    """However TCP cuts the stream, the events are those of the whole stream."""
    whole = _upload_events(0)
    assert [e["op"] for e in whole] == ["open", "close"]
    for cut in range(len(UPLOAD_TAIL) + 1):
        assert _upload_events(cut) == whole, cut


def test_byte_by_byte_feeding_gives_the_same_events() -> None:
    """One byte per call in both directions still finds every packet."""
    observer = SftpObserver()
    events: list[dict[str, Any]] = []
    for chunk, side in ((UPLOAD_OPEN, "c"), (UPLOAD_HANDLE, "s"), (UPLOAD_TAIL, "c")):
        feed = observer.from_client if side == "c" else observer.from_server
        for i in range(len(chunk)):
            events += feed(chunk[i : i + 1])
    assert events == _upload_events(0)
