"""Sending mail for the mail service: the `Mailer` it sends through (SMTP, or discarding when
no server is configured) and the messages, whose Message-IDs are derived from what caused
them, so a repeat after a crash carries the same Message-ID and a receiver can drop it.

Every message names its one recipient explicitly (`Outgoing.recipient`, checked by
`lifecycle.addresses.single_mailbox` after folding) and SMTP is given that envelope recipient,
never a list parsed back out of the `To` header: an address that is not exactly one mailbox
raises `InvalidRecipientError` (the record's own fault) before anything is sent.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from contextlib import contextmanager
from email.errors import HeaderParseError
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTPUTF8, compat32
from email.utils import formataddr, formatdate
from typing import Protocol
from uuid import NAMESPACE_URL, UUID, uuid5

from lifecycle.addresses import AddressError, single_mailbox
from lifecycle.logs import get_logger
from schemas.contract import erasure_receipt_id

MAIL_FROM = "no-reply@jobchange.example"
MESSAGE_ID_DOMAIN = "mail.jobchange.example"
CONFIRMATION_KIND = "withdrawal-complete"
KIND_HEADER = "X-Jobchange-Kind"
CONTROL = re.compile(r"[\x00-\x1f\x7f]")

log = get_logger(__name__)


class InvalidRecipientError(ValueError):
    """The address is not exactly one mailbox; the message never repeats it."""

    code = "recipient_invalid"


class Mailer(Protocol):
    def send(self, message: EmailMessage, recipient: str) -> None:
        """Send `message` to `recipient` only (the envelope's one RCPT TO)."""
        ...


class SmtpMailer:
    """One SMTP session per message, to a configured relay; inside `session()`, one for all."""

    def __init__(self, host: str, port: int, *, timeout_s: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._session: smtplib.SMTP | None = None
        self._batched = False

    @contextmanager
    def session(self) -> Iterator[None]:
        """The sends inside share one SMTP session (opened by the first): a batch's mails
        cost one connection and greeting, not one each."""
        self._batched = True
        try:
            yield
        finally:
            self._batched = False
            smtp, self._session = self._session, None
            if smtp is not None:
                try:
                    smtp.quit()
                except (smtplib.SMTPException, OSError):
                    smtp.close()

    def send(self, message: EmailMessage, recipient: str) -> None:
        to = [checked_recipient(recipient)]
        try:
            if not self._batched:
                with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                    smtp.send_message(message, from_addr=MAIL_FROM, to_addrs=to)
                return
            if self._session is None:
                self._session = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
            try:
                self._session.send_message(message, from_addr=MAIL_FROM, to_addrs=to)
            except BaseException:
                smtp, self._session = self._session, None
                smtp.close()  # the next send, or the retry, opens a new session
                raise
        except (UnicodeError, smtplib.SMTPNotSupportedError):
            # An internationalised address the relay cannot take (no SMTPUTF8): never sendable
            # there, the record's own fault, not an outage to wait out.
            raise InvalidRecipientError("recipient cannot be sent through this relay") from None


class DiscardingMailer:
    """No SMTP server configured (embedded first run): log the Message-ID, keep nothing."""

    def __init__(self) -> None:
        self.discarded = 0

    def send(self, message: EmailMessage, recipient: str) -> None:
        checked_recipient(recipient)
        self.discarded += 1
        log.info("mail.discarded", message_id=message["Message-ID"], kind=message[KIND_HEADER])


def checked_recipient(address: str) -> str:
    """The address as one folded mailbox, or InvalidRecipientError."""
    try:
        return single_mailbox(address)
    except AddressError:
        raise InvalidRecipientError("recipient is not exactly one mailbox") from None


def message_id_for(source_id: str) -> str:
    """Deterministic: the same withdrawal or notice always yields the same Message-ID."""
    return f"<{uuid5(NAMESPACE_URL, f'jobchange-mail:{source_id}')}@{MESSAGE_ID_DOMAIN}>"


def confirmation_message(
    withdrawal_ce_id: str, email: str, display_name: str, account_id: UUID
) -> EmailMessage:
    """The withdrawal-complete mail; it names the erasure receipt by id (ids only, no values)."""
    message = _message(email, display_name, message_id_for(withdrawal_ce_id), CONFIRMATION_KIND)
    receipt_id = erasure_receipt_id(account_id)
    return _text(
        message,
        "退会手続きが完了しました / Your withdrawal is complete",
        f"{display_name} 様\n\n"
        "退会手続きが完了しました。今後、お知らせやスカウトのメールは届きません。\n"
        "ご登録の情報はすべてのサービスから削除されます。\n"
        f"署名付き削除証明書の番号: {receipt_id}\n\n"
        "Your withdrawal is complete. No further notices or scouts will be mailed to you,\n"
        "and your data is being erased from every service.\n"
        f"Signed erasure receipt id: {receipt_id}\n",
    )


def notice_message(
    notice_id: str, *, email: str, display_name: str, kind: str, subject: str, body: str
) -> EmailMessage:
    message = _message(email, display_name, message_id_for(f"notice:{notice_id}"), kind)
    return _text(message, subject, body)


def _message(email: str, display_name: str, message_id: str, kind: str) -> EmailMessage:
    """An ASCII address: headers as `formataddr` and `Header` render them, under the compat32
    policy (the default policy parses every header value set back into an object, ~1 ms of
    CPU a message, for the same bytes on the wire). An internationalised one (RFC 6532, as
    registration accepts): the SMTPUTF8 policy, which smtplib needs to send it."""
    recipient = checked_recipient(email)
    name = _one_line(display_name)
    try:
        if recipient.isascii():
            message = EmailMessage(policy=compat32)
            to: object = formataddr((name, recipient), "utf-8")
        else:
            message = EmailMessage(policy=SMTPUTF8)
            local, _, domain = recipient.rpartition("@")  # addr_spec= refuses a UTF-8 local part
            to = Address(name, username=local, domain=domain)
        message["From"] = MAIL_FROM
        message["To"] = to
    except (ValueError, HeaderParseError):  # UnicodeError is a ValueError
        raise InvalidRecipientError("recipient cannot be written in a header") from None
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id
    message[KIND_HEADER] = kind
    return message


def _text(message: EmailMessage, subject: str, body: str) -> EmailMessage:
    """The subject (RFC 2047 where not ASCII) and a text/plain UTF-8 body."""
    if message.policy is compat32:
        message["Subject"] = Header(_one_line(subject), "utf-8")
        message.set_payload(body, charset="utf-8")
    else:
        message["Subject"] = _one_line(subject)
        message.set_content(body)
    return message


def _one_line(text: str) -> str:
    """A header's text with any control character (a line break above all) as a space: a
    member's display name never starts a header line of its own."""
    return CONTROL.sub(" ", text)
