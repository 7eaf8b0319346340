"""SmtpNotifier against a real SMTP server (aiosmtpd) on loopback: delivery, headers, outages,
header injection, AUTH and STARTTLS."""

from __future__ import annotations

import ipaddress
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

from keyturn.adapters.notifiers.email import FOOTER, SmtpNotifier
from keyturn.config import SmtpConfig
from keyturn.lab import free_port
from keyturn.ports import Notification, Recipient
from keyturn.testing import FakeClock

pytestmark = pytest.mark.integration

SENDER = "keyturn@example.org"
PASSWORD = "correct horse battery staple"
CAROL = Recipient("carol", "Carol Nguyen", "carol@example.com")
ZOE = Recipient("zoe", "Zoë Brontë", "zoe@example.com")
NOBODY = Recipient("nomail", "No Mail", None)


@dataclass(frozen=True)
class Received:
    """One message as the server got it: envelope and parsed RFC 5322 message."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    message: EmailMessage
    login: str | None


class Inbox:
    """aiosmtpd handler recording every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()

    async def handle_DATA(  # noqa: N802 - the hook name aiosmtpd calls
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or b""
        parsed = BytesParser(policy=default_policy).parsebytes(raw)
        assert isinstance(parsed, EmailMessage)
        login = session.auth_data.login.decode() if session.auth_data else None
        with self._lock:
            self.messages.append(
                Received(envelope.mail_from or "", list(envelope.rcpt_tos), raw, parsed, login)
            )
        return "250 Message accepted"

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.messages)


def wait_until(condition: Callable[[], object], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def start_server(port: int, inbox: Inbox, **options: Any) -> Controller:
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    return controller


def settings(port: int, **changes: Any) -> SmtpConfig:
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "from_address": SENDER,
        "timeout": timedelta(seconds=5),
    }
    return SmtpConfig(**(fields | changes))


def note(*recipients: Recipient, subject: str = "Review needed: bob asks for x") -> Notification:
    return Notification(
        "review.needed",
        recipients,
        subject,
        "Bob asks for db-schema-admin on db-1.\nApprove: keyturn approve req_1",
        {"request_id": "req_1"},
    )


def authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
) -> AuthResult:
    """Accept the one test account."""
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        b"keyturn",
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False, auth_data=data if ok else None)


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def smtp_port(inbox: Inbox) -> Iterator[int]:
    """A plain SMTP server on a free loopback port; yields the port."""
    port = free_port()
    controller = start_server(port, inbox)
    yield port
    controller.stop()


def test_each_recipient_gets_one_message_with_the_right_headers(
    smtp_port: int, inbox: Inbox
) -> None:
    """One message per recipient, addressed to them only, with RFC 5322 headers and the body."""
    clock = FakeClock(datetime(2026, 11, 17, 2, 45, tzinfo=UTC))
    notifier = SmtpNotifier(settings(smtp_port), password=None, clock=clock)
    notifier.notify(note(CAROL, ZOE))
    notifier.close()

    got = sorted(inbox.received(), key=lambda r: r.rcpt_tos)
    assert [(r.mail_from, r.rcpt_tos) for r in got] == [
        (SENDER, ["carol@example.com"]),
        (SENDER, ["zoe@example.com"]),
    ]
    carol, zoe = (r.message for r in got)
    assert carol["From"] == f"Keyturn <{SENDER}>"
    assert carol["To"] == "Carol Nguyen <carol@example.com>"
    assert zoe["To"].addresses[0].display_name == "Zoë Brontë"  # RFC 2047 round trip
    assert carol["Subject"] == "Review needed: bob asks for x"
    assert carol["Date"].datetime == datetime(2026, 11, 17, 2, 45, tzinfo=UTC)
    assert b"\r\nDate: Tue, 17 Nov 2026 02:45:00 +0000\r\n" in got[0].raw
    assert carol["Message-ID"].endswith("@example.org>")
    assert carol["Auto-Submitted"] == "auto-generated"
    assert carol.get_content_type() == "text/plain"
    body = carol.get_content().replace("\r\n", "\n")  # CRLF on the wire (RFC 5322 §2.3)
    assert body == note(CAROL).text + FOOTER.format(event="review.needed")


def test_recipient_without_email_is_skipped_and_logged(smtp_port: int, inbox: Inbox) -> None:
    """No address, no message; the others still get theirs."""
    notifier = SmtpNotifier(settings(smtp_port), password=None)
    with capture_logs() as logs:
        notifier.notify(note(NOBODY, CAROL))
        notifier.close()
    assert [r.rcpt_tos for r in inbox.received()] == [["carol@example.com"]]
    skipped = [e for e in logs if e["event"] == "no usable e-mail address; recipient skipped"]
    assert [e["user_id"] for e in skipped] == ["nomail"]


def test_server_down_is_logged_and_later_mail_still_goes(inbox: Inbox) -> None:
    """Relay down: a log line, no exception, message dropped; once it is back, mail flows."""
    port = free_port()
    notifier = SmtpNotifier(settings(port), password=None)
    with capture_logs() as logs:
        notifier.notify(note(CAROL, subject="first"))
        wait_until(lambda: any("unavailable" in e["event"] for e in logs))
        controller = start_server(port, inbox)
        try:
            notifier.notify(note(CAROL, subject="second"))
            notifier.close()
        finally:
            controller.stop()
    assert [r.message["Subject"] for r in inbox.received()] == ["second"]
    [down] = [e for e in logs if "unavailable" in e["event"]]
    assert down["error"] == "ConnectionRefusedError"
    assert down["dropped"] == 1
    assert down["log_level"] == "error"


@pytest.mark.parametrize(
    "name",
    ["Eve\r\nBcc: mallory@example.com", "Eve\nBcc: mallory@example.com", "Eve\rX-Evil: 1"],
)
def test_display_name_cannot_add_headers(smtp_port: int, inbox: Inbox, name: str) -> None:
    """CR/LF in a display name become spaces: no new header, no extra recipient."""
    notifier = SmtpNotifier(settings(smtp_port), password=None)
    notifier.notify(note(Recipient("eve", name, "eve@example.com")))
    notifier.close()
    [got] = inbox.received()
    assert got.rcpt_tos == ["eve@example.com"]
    assert "Bcc" not in got.message
    assert "X-Evil" not in got.message
    assert got.message["To"].addresses[0].addr_spec == "eve@example.com"
    assert "\n" not in got.message["To"].addresses[0].display_name


@pytest.mark.parametrize("newline", ["\r\n", "\n", "\u2028"])
def test_subject_cannot_add_headers_or_body(smtp_port: int, inbox: Inbox, newline: str) -> None:
    """A subject with line breaks stays one Subject header; nothing after them becomes a header
    or the body."""
    subject = f"Hi{newline}Bcc: mallory@example.com{newline}{newline}fake body"
    notifier = SmtpNotifier(settings(smtp_port), password=None)
    notifier.notify(note(CAROL, subject=subject))
    notifier.close()
    [got] = inbox.received()
    assert got.rcpt_tos == ["carol@example.com"]
    assert "Bcc" not in got.message
    spaces = " " * len(newline)
    assert got.message["Subject"] == f"Hi{spaces}Bcc: mallory@example.com{spaces * 2}fake body"
    assert not got.message.get_content().startswith("fake body")


@pytest.mark.parametrize(
    "address",
    [
        "eve@example.com\r\nBcc: mallory@example.com",
        "eve@example.com>, mallory@example.com",
        "not-an-address",
    ],
)
def test_malformed_address_is_skipped(smtp_port: int, inbox: Inbox, address: str) -> None:
    """An address that is not exactly one addr-spec is never sent to."""
    notifier = SmtpNotifier(settings(smtp_port), password=None)
    notifier.notify(note(Recipient("eve", "Eve", address), CAROL))
    notifier.close()
    assert [r.rcpt_tos for r in inbox.received()] == [["carol@example.com"]]


@pytest.fixture
def auth_port(inbox: Inbox) -> Iterator[int]:
    """An SMTP server offering AUTH without TLS (for the test; not requiring AUTH, which would
    make aiosmtpd warn about exactly that)."""
    port = free_port()
    controller = start_server(port, inbox, authenticator=authenticate, auth_require_tls=False)
    yield port
    controller.stop()


def test_login_when_a_username_is_set(auth_port: int, inbox: Inbox) -> None:
    """With username and password the notifier authenticates (RFC 4954) and delivers."""
    notifier = SmtpNotifier(settings(auth_port, username="keyturn"), password=PASSWORD)
    notifier.notify(note(CAROL))
    notifier.close()
    assert [r.login for r in inbox.received()] == ["keyturn"]


def test_login_refused_is_logged_without_password_or_body(auth_port: int, inbox: Inbox) -> None:
    """A wrong password: nothing delivered, an error logged, and no secret or body in it."""
    notifier = SmtpNotifier(settings(auth_port, username="keyturn"), password="wrong-pw-123")
    with capture_logs() as logs:
        notifier.notify(note(CAROL))
        notifier.close()
    assert inbox.received() == []
    [failed] = [e for e in logs if "unavailable" in e["event"]]
    assert failed["error"] == "SMTPAuthenticationError"
    assert "wrong-pw-123" not in repr(logs)
    assert "keyturn approve" not in repr(logs)


def test_alerts_are_logged_not_mailed(smtp_port: int, inbox: Inbox) -> None:
    """Operators' alerts go to the log (and the webhook), not to people's mailboxes."""
    notifier = SmtpNotifier(settings(smtp_port), password=None)
    with capture_logs() as logs:
        notifier.alert("revoke.failed", "revocation failing", {"grant_id": "g1", "event": "x"})
        notifier.close()
    assert inbox.received() == []
    assert [(e["event"], e["alert"]) for e in logs] == [("revocation failing", "revoke.failed")]


def test_unusable_sender_is_refused_at_construction() -> None:
    """A From address that passes the config pattern but is no addr-spec fails at start-up."""
    with pytest.raises(ValueError, match="addr_spec"):
        SmtpNotifier(settings(25, from_address="a,b@example.org"), password=None)


def test_username_without_password_is_refused() -> None:
    """Misconfiguration is caught when the notifier is built, not at the first e-mail."""
    with pytest.raises(ValueError, match="no password"):
        SmtpNotifier(settings(25, username="keyturn"), password=None)


def self_signed(tmp: Path) -> tuple[Path, Path, bytes]:
    """A P-256 certificate for 127.0.0.1 (cert path, key path, PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2000, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2100, 1, 1, tzinfo=UTC))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp / "cert.pem").write_bytes(pem)
    (tmp / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tmp / "cert.pem", tmp / "key.pem", pem


@pytest.fixture
def tls_server(tmp_path: Path, inbox: Inbox) -> Iterator[tuple[int, bytes]]:
    """An SMTP server that requires STARTTLS (RFC 3207) and AUTH; yields (port, cert PEM)."""
    cert, key, pem = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    port = free_port()
    controller = start_server(
        port,
        inbox,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
    )
    yield port, pem
    controller.stop()


def test_starttls_then_login(tls_server: tuple[int, bytes], inbox: Inbox) -> None:
    """STARTTLS with a verified certificate, then AUTH over TLS, then delivery."""
    port, pem = tls_server
    trust = ssl.create_default_context(cadata=pem.decode())
    notifier = SmtpNotifier(
        settings(port, starttls=True, username="keyturn"), password=PASSWORD, tls_context=trust
    )
    notifier.notify(note(CAROL))
    notifier.close()
    assert [r.login for r in inbox.received()] == ["keyturn"]


def test_starttls_refuses_an_untrusted_certificate(
    tls_server: tuple[int, bytes], inbox: Inbox
) -> None:
    """The default TLS context verifies the relay: a self-signed certificate is refused (logged),
    so the password is never sent to an impostor."""
    port, _ = tls_server
    notifier = SmtpNotifier(settings(port, starttls=True, username="keyturn"), password=PASSWORD)
    with capture_logs() as logs:
        notifier.notify(note(CAROL))
        notifier.close()
    assert inbox.received() == []
    [failed] = [e for e in logs if "unavailable" in e["event"]]
    assert failed["error"] == "SSLCertVerificationError"
