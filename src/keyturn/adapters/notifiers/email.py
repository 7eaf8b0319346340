"""Notifications by e-mail through an SMTP relay (RFC 5321), one message per recipient.

:class:`SmtpNotifier` implements :class:`keyturn.ports.Notifier`. ``notify`` builds one RFC 5322
message per recipient that has an address and puts it on a bounded queue; one daemon thread
drains the queue in batches, one SMTP session per batch (``STARTTLS`` per RFC 3207 when
configured, then ``AUTH`` per RFC 4954 when a username is set). Nothing is ever raised to the
caller: a relay that is down, slow or refusing costs log lines, and the messages of that batch are
dropped (notifications are a convenience; the audit trail is the record).

Operators' alerts (``alert``) are not e-mailed: they go to the log here, and to the webhook when
one is configured (see :mod:`keyturn.adapters.notifiers.webhook`).

Safety:
    * Header injection is impossible: CR, LF and every other control character are replaced by
      spaces in display names and subjects before they reach a header, and addresses must parse
      as exactly one RFC 5322 ``addr-spec`` (``email.headerregistry.Address``), else the recipient
      is skipped with a log line. The ``email`` package would also refuse CR/LF in a header.
    * Logs carry user ids, the relay's host, the event and the error type; never the password,
      the body or e-mail addresses.
    * Non-ASCII display names are encoded per RFC 2047; internationalised domains are sent as
      given (``smtplib`` uses SMTPUTF8, RFC 6531, when the relay offers it). Non-ASCII local parts
      are refused by ``email.headerregistry`` on this Python, so such recipients are skipped.
"""

from __future__ import annotations

import contextlib
import queue
import smtplib
import ssl
import threading
import unicodedata
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import structlog

from keyturn.adapters.clock import SystemClock
from keyturn.config import SmtpConfig
from keyturn.ports import Clock, Notification, Recipient

log = structlog.get_logger("keyturn.notifier.smtp")

QUEUE_SIZE = 10_000
BATCH_SIZE = 100
"""Messages sent over one SMTP session at most; the next batch opens a new one."""

FOOTER = (
    "\n\n-- \n"  # RFC 3676 §4.3 signature separator
    "Sent by Keyturn (just-in-time access). Event: {event}.\n"
    "Do not reply to this message.\n"
)


@dataclass(frozen=True)
class _Outgoing:
    """One queued message: who it is for (for logs) and the message itself."""

    user_id: str
    event: str
    message: EmailMessage


LINE_BREAKING = frozenset({"Cc", "Zl", "Zp"})
"""Unicode categories replaced in header text: controls (CR, LF, NEL, TAB, NUL, …) and the line
and paragraph separators U+2028/U+2029."""


def one_line(text: str) -> str:
    """``text`` with every character of :data:`LINE_BREAKING` replaced by a space and the ends
    stripped, so it can never start a new header line (RFC 5322 §2.2: header fields are lines)."""
    return "".join(" " if unicodedata.category(c) in LINE_BREAKING else c for c in text).strip()


def mailbox(recipient: Recipient) -> Address | None:
    """The ``To`` mailbox of ``recipient`` (display name cleaned by :func:`one_line`), or None
    when they have no e-mail or it is not exactly one RFC 5322 ``addr-spec``."""
    if not recipient.email:
        return None
    try:
        return Address(display_name=one_line(recipient.name), addr_spec=recipient.email.strip())
    except ValueError:  # includes email.errors.HeaderDefect (a ValueError subclass)
        return None


class SmtpNotifier:
    """:class:`keyturn.ports.Notifier` sending notifications as plain-text e-mail.

    Args:
        settings: relay, port, sender, STARTTLS, username, timeout (``notifier.smtp``).
        password: the relay password (from ``settings.password_env``); needed when
            ``settings.username`` is set.
        clock: the source of each message's ``Date`` (default: the system clock).
        tls_context: for STARTTLS (default: ``ssl.create_default_context()``, which verifies
            the relay's certificate and host name).

    Raises:
        ValueError: ``settings.username`` is set and ``password`` is missing, or
            ``settings.from_address`` is not one RFC 5322 ``addr-spec``.
    """

    def __init__(
        self,
        settings: SmtpConfig,
        *,
        password: str | None,
        clock: Clock | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if settings.username is not None and not password:
            raise ValueError("notifier.smtp.username is set but no password was given")
        if settings.username is not None and not settings.starttls:
            log.warning("smtp login without starttls sends the password unencrypted")
        self._from = Address(display_name="Keyturn", addr_spec=settings.from_address)
        self._settings = settings
        self._password = password
        self._clock = clock or SystemClock()
        self._tls = tls_context
        self._queue: queue.Queue[_Outgoing | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread = threading.Thread(target=self._drain, name="keyturn-smtp", daemon=True)
        self._thread.start()

    def alert(self, event: str, summary: str, details: dict[str, str]) -> None:
        """Log the alert (operators' alerts are not e-mailed; the webhook carries them)."""
        log.error(summary, alert=event, details=details)

    def notify(self, notification: Notification) -> None:
        """Queue one e-mail per recipient with a valid address; skip (and log) the others.

        Never raises and never blocks: a full queue drops the message with a log line.
        """
        for recipient in notification.recipients:
            address = mailbox(recipient)
            if address is None:
                log.info(
                    "no usable e-mail address; recipient skipped",
                    notification=notification.event,
                    user_id=recipient.user_id,
                )
                continue
            self._enqueue(
                _Outgoing(
                    recipient.user_id, notification.event, self._message(notification, address)
                )
            )

    def _message(self, notification: Notification, to: Address) -> EmailMessage:
        """The RFC 5322 message for one recipient."""
        message = EmailMessage()
        message["From"] = self._from
        message["To"] = to
        message["Subject"] = one_line(notification.subject)
        message["Date"] = format_datetime(self._clock.now())  # RFC 5322 §3.3, "+0000"
        message["Message-ID"] = make_msgid(domain=self._from.domain)
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834 §5: no auto-replies, please
        message.set_content(notification.text + FOOTER.format(event=notification.event))
        return message

    def _enqueue(self, outgoing: _Outgoing) -> None:
        try:
            self._queue.put_nowait(outgoing)
        except queue.Full:
            log.error(
                "e-mail queue full; notification dropped",
                notification=outgoing.event,
                user_id=outgoing.user_id,
            )

    def _drain(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = [first]
            stop = False
            while len(batch) < BATCH_SIZE:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._deliver(batch)
            if stop:
                return

    def _deliver(self, batch: list[_Outgoing]) -> None:
        """Send a batch over one session; on a session failure the rest of the batch is dropped."""
        sent = 0
        try:
            smtp = self._session()
            try:
                for outgoing in batch:
                    self._send(smtp, outgoing)
                    sent += 1
            finally:
                with contextlib.suppress(smtplib.SMTPException, OSError):
                    smtp.quit()
                smtp.close()
        except (smtplib.SMTPException, OSError) as exc:
            log.error(
                "smtp relay unavailable; e-mail notifications dropped",
                smtp=self._settings.host,
                port=self._settings.port,
                error=type(exc).__name__,
                dropped=len(batch) - sent,
                notifications=sorted({o.event for o in batch[sent:]}),
            )

    def _session(self) -> smtplib.SMTP:
        """A connected, (optionally) encrypted and authenticated SMTP session.

        Raises:
            smtplib.SMTPException, OSError: connecting, STARTTLS or AUTH failed.
        """
        settings = self._settings
        smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout.total_seconds())
        try:
            smtp.ehlo()
            if settings.starttls:
                smtp.starttls(context=self._tls or ssl.create_default_context())
                smtp.ehlo()
            if settings.username is not None and self._password is not None:
                smtp.login(settings.username, self._password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _send(self, smtp: smtplib.SMTP, outgoing: _Outgoing) -> None:
        """Send one message; a refusal of this message only is logged and the batch goes on.

        Raises:
            smtplib.SMTPServerDisconnected, OSError: the session broke.
        """
        try:
            smtp.send_message(outgoing.message)
        except (
            smtplib.SMTPRecipientsRefused,
            smtplib.SMTPResponseException,
            smtplib.SMTPNotSupportedError,
        ) as exc:
            log.error(
                "smtp relay refused an e-mail notification",
                smtp=self._settings.host,
                notification=outgoing.event,
                user_id=outgoing.user_id,
                error=type(exc).__name__,
                code=getattr(exc, "smtp_code", None),
            )

    def close(self) -> None:
        """Deliver what is queued (the stop marker goes behind it; waits ~5 s for room and up to
        the SMTP timeout plus 10 s for delivery), then stop the thread."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=5)
        self._thread.join(timeout=self._settings.timeout.total_seconds() + 10)
