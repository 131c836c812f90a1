"""The mail service's notices: queued (`mail_outbox`), then sent, dropped or suppressed, each
outcome kept with its date (`mail_notices`, subject and body sealed under the account's key)
so the member's export can list them. Both tables are erased with the account.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

from consumers.contacts import Contacts
from consumers.handler import ExportFailedError
from consumers.mailer import InvalidRecipientError, Mailer, notice_message
from consumers.member_data import Tombstones
from consumers.sealed import SealedValues
from consumers.store import utc
from lifecycle.keyring import Keyring
from lifecycle.logs import get_logger
from lifecycle.storage import Cursor, Database
from schemas.data_export import MailNoticeV1, NoticeStatus

SERVICE = "mail"
SUPPRESSIONS = "suppressions"  # the mail service's tombstones (consumers.mail)
# The sealed columns (consumers.sealed binds each value to its column).
NOTICE_SUBJECT = "mail_notices.subject"
NOTICE_BODY = "mail_notices.body"

log = get_logger(__name__)


def tombstones(database: Database) -> Tombstones:
    return Tombstones(database, SERVICE, SUPPRESSIONS)


def queue_notice(
    database: Database, account_id: UUID, *, kind: str, subject: str, body: str
) -> str:
    """Queue a notice for delivery; refused (AccountWithdrawnError) once withdrawn."""
    notice_id = str(uuid4())
    with database.transaction() as cursor:
        tombstones(database).check_not_withdrawn(cursor, account_id)
        cursor.execute(
            f"INSERT INTO {database.table('mail_outbox')} "
            "(notice_id, account_id, kind, subject, body, queued_at) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (
                notice_id,
                str(account_id),
                kind,
                subject,
                body,
                database.dialect.timestamp(datetime.now(UTC)),
            ),
        )
    return notice_id


class _AddressUnknownError(Exception):
    pass


def deliver_queued(
    database: Database, mailer: Mailer, keyring: Keyring, *, limit: int = 100
) -> int:
    """Send queued notices; returns how many were sent.

    Each notice is sent inside a transaction holding its account's lock, after checking the
    suppression: a withdrawal waits for a send in progress and no send follows a withdrawal.
    Notices for an address not yet known stay queued; a kind the member switched off is dropped.
    `keyring` is the service's, the one its handler seals contacts with.
    """
    sealed = SealedValues(database, keyring)
    contacts = Contacts(database, sealed)
    with database.transaction(commit=False) as cursor:
        queued = cursor.execute(
            f"SELECT notice_id, account_id FROM {database.table('mail_outbox')} "
            "ORDER BY queued_at, notice_id LIMIT %s",
            (limit,),
        ).fetchall()
    sent = 0
    for notice_id, account in queued:
        try:
            sent += _deliver_one(database, mailer, contacts, notice_id, UUID(account))
        except _AddressUnknownError:
            continue
    return sent


def _deliver_one(
    database: Database, mailer: Mailer, contacts: Contacts, notice_id: str, account_id: UUID
) -> int:
    withdrawn = tombstones(database)
    with database.transaction() as cursor:
        withdrawn.lock(cursor, [account_id])
        notice = cursor.execute(
            f"DELETE FROM {database.table('mail_outbox')} WHERE notice_id = %s "
            "RETURNING kind, subject, body, queued_at",
            (notice_id,),
        ).fetchone()
        if notice is None or withdrawn.among(cursor, [account_id]):
            return 0
        contact = contacts.of(cursor, [account_id]).get(account_id)
        if contact is None:
            raise _AddressUnknownError()
        kind, subject, body, queued_at = notice
        fate = (notice_id, kind, subject, body, queued_at)
        if contact.notifications.get(kind) is False:
            log.info("mail.notice_dropped", account_id=str(account_id), kind=kind)
            _record(contacts.sealed, cursor, account_id, fate, "dropped")
            return 0
        try:
            message = notice_message(
                notice_id,
                email=contact.email,
                display_name=contact.display_name,
                kind=kind,
                subject=subject,
                body=body,
            )
            mailer.send(message, contact.email)
        except InvalidRecipientError:
            log.warning("mail.recipient_refused", account_id=str(account_id), kind=kind)
            _record(contacts.sealed, cursor, account_id, fate, "suppressed")
            return 0
        _record(contacts.sealed, cursor, account_id, fate, "sent")
    log.info("mail.notice_sent", account_id=str(account_id), message_id=message["Message-ID"])
    return 1


def _record(
    sealed: SealedValues,
    cursor: Cursor,
    account_id: UUID,
    notice: tuple[str, str, str, str, object],
    status: NoticeStatus,
) -> None:
    """One notice's fate, kept in `mail_notices` in the delivery's transaction."""
    notice_id, kind, subject, body, queued_at = notice
    key = sealed.keys_for(cursor, [account_id], create=True)[account_id]
    cursor.execute(
        f"INSERT INTO {sealed.database.table('mail_notices')} "
        "(notice_id, account_id, kind, subject, body, status, queued_at, sent_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            notice_id,
            str(account_id),
            kind,
            sealed.seal(key, account_id, NOTICE_SUBJECT, subject),
            sealed.seal(key, account_id, NOTICE_BODY, body),
            status,
            queued_at,
            sealed.database.dialect.timestamp(datetime.now(UTC)),
        ),
    )


def notices_of(cursor: Cursor, sealed: SealedValues, account_id: UUID) -> list[MailNoticeV1]:
    """Every notice of the account, queued or not, oldest first (for its export)."""
    db, account = sealed.database, str(account_id)
    queued = cursor.execute(
        f"SELECT notice_id, kind, subject, body, queued_at FROM {db.table('mail_outbox')} "
        "WHERE account_id = %s",
        (account,),
    ).fetchall()
    done = cursor.execute(
        "SELECT notice_id, kind, subject, body, status, queued_at, sent_at "
        f"FROM {db.table('mail_notices')} WHERE account_id = %s",
        (account,),
    ).fetchall()
    key = sealed.keys_for(cursor, [account_id]).get(account_id) if done else None
    notices = [
        MailNoticeV1(
            notice_id=notice_id,
            kind=kind,
            subject=subject,
            body=body,
            status="queued",
            queued_at=utc(queued_at),
        )
        for notice_id, kind, subject, body, queued_at in queued
    ]
    for notice_id, kind, subject, body, status, queued_at, sent_at in done:
        notices.append(
            MailNoticeV1(
                notice_id=notice_id,
                kind=kind,
                subject=_opened(sealed, key, account_id, NOTICE_SUBJECT, subject),
                body=_opened(sealed, key, account_id, NOTICE_BODY, body),
                status=status,
                queued_at=utc(queued_at),
                sent_at=utc(sent_at),
            )
        )
    return sorted(notices, key=lambda n: (n.queued_at, n.notice_id))


def _opened(
    sealed: SealedValues, key: bytes | None, account_id: UUID, field: str, stored: str
) -> str:
    value = sealed.open(key, account_id, field, stored)
    if value is None:
        raise ExportFailedError("internal_error")  # a notice its key no longer opens
    return value
