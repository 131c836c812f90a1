"""The mail service's eraser: contact addresses, queued notices, one withdrawal confirmation.

Tables in the service's own schema:
- `contacts`: the address, name and notification choices, from the compacted profile topic;
  the address and name sealed under the account's key (`consumers.sealed`, table
  `sealed_keys`), which the erasure destroys with the row;
- `mail_outbox`: notices queued for delivery (`queue_notice`, sent by `deliver_queued`);
- `suppressions`: one row per withdrawn account (ids, counts and times only): no notice is
  queued or delivered for it any more, and it records the confirmation mail that was sent.

On WithdrawalRequested, in this order (steps 1 and 2 for all the withdrawals of a poll at once,
before anything else of it, so a suppression waits for no other record):
1. one transaction: the suppression row and the deletion of every queued notice, so from this
   commit on nothing else is sent (delivery checks the suppression under the same lock);
2. the withdrawal-complete mail through SMTP (one session for the poll), Message-ID derived
   from the withdrawal's `ce_id`, then its send recorded on the suppression row;
3. one transaction (the kit's): the address and any remaining notices deleted, and the erasure
   confirmation (with the rows removed) written to the kit's outbox with the processed mark.

At-least-once window: a crash of the process after the SMTP server accepted the mail and before
step 2's record commits sends the confirmation again on restart, with the same Message-ID, so a
receiving system can drop the copy. A record that fails while the process lives (a cut database
connection) does not: the handler remembers the send and only records it on the retry.
Everything else is exactly once by the kit's mark.

Two topics carry no order between them. A profile record in the same poll gives the address
at once. When the withdrawal is handled before the member's profile record, it is unknown:
steps 1 and 3 still run at once (nothing more is sent, nothing is held), the suppression row
waits for the address (`awaiting_address`), and when the profile record arrives the mail is
sent to it without the address ever being stored; only then is erasure confirmed. The
profile record always arrives: the relay publishes it with the registration, long before any
withdrawal, and a compacted topic keeps the latest value.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from uuid import UUID, uuid4

from consumers.handler import (
    AccountWithdrawnError,
    Handler,
    HandlerResult,
    TransientError,
    erasure_confirmation,
)
from consumers.mailer import InvalidRecipientError, Mailer, notice_message
from consumers.sealed import SealedValues
from consumers.store import count_rows, insert_rows
from consumers.withdrawal_mail import CONTACT_EMAIL, CONTACT_NAME, WithdrawalMail
from lifecycle.keyring import Keyring
from lifecycle.logs import get_logger
from lifecycle.storage import Cursor, Database, lock_key, lock_keys
from schemas.contract import Envelope, ProfileV1, PurgedV1, TopicNames, WithdrawalRequestedV1

SERVICE = "mail"
CONTACT_COLUMNS = (
    ("account_id", "text"),
    ("email", "text"),
    ("display_name", "text"),
    ("notifications", "text"),
)

log = get_logger(__name__)


# Topics


def subscribed_topics(topics: TopicNames) -> list[str]:
    return [topics.lifecycle, topics.profile]


# The handler


class MailHandler(Handler):
    personal_tables = ("contacts", "mail_outbox")

    def __init__(
        self, database: Database, topics: TopicNames, mailer: Mailer, *, keyring: Keyring
    ) -> None:
        self.database = database
        self.topics = topics
        self.mailer = mailer
        self.sealed = SealedValues(database, keyring)
        self.withdrawal_mail = WithdrawalMail(database, mailer, self.sealed)

    def commits_before_prepare(self, envelope: Envelope) -> bool:
        # `prepare_many` takes a withdrawal's address from the batch's own profile records as
        # well as from the stored contacts: no record needs an earlier one committed.
        return False

    def prepare(self, envelope: Envelope) -> None:
        self.prepare_many([envelope])

    def prepare_many(self, envelopes: Sequence[Envelope]) -> None:
        self.withdrawal_mail.prepare(envelopes)

    def handle(self, envelope: Envelope, cursor: Cursor) -> HandlerResult:
        data = envelope.data
        if isinstance(data, WithdrawalRequestedV1):
            return self._after_withdrawal(cursor, data.account_id)
        if isinstance(data, ProfileV1):
            return self._on_profile(cursor, data)
        if envelope.is_tombstone and envelope.type == ProfileV1.ce_type():
            removed = self._delete(cursor, envelope.account_id, "contacts")
            self.sealed.destroy(cursor, [envelope.account_id])
            return HandlerResult(outcome="contact_erased" if removed else "ignored")
        if isinstance(data, PurgedV1):
            self._lock(cursor, data.account_id)
            self._delete(cursor, data.account_id, "contacts")
            self._delete(cursor, data.account_id, "mail_outbox")
            self.sealed.destroy(cursor, [data.account_id])
            return HandlerResult(outcome="purged")
        return HandlerResult(outcome="ignored")

    # Step 3: erase and confirm (inside the kit's transaction)

    def handle_many(self, envelopes: Sequence[Envelope], cursor: Cursor) -> list[HandlerResult]:
        """`handle` for each, in order, except the records whose account no other record of
        the batch names: their withdrawals already mailed are erased and confirmed together,
        their profiles of accounts never withdrawn saved together, first."""
        named = Counter(envelope.subject for envelope in envelopes)
        withdrawals: dict[str, UUID] = {}
        profiles: dict[str, ProfileV1] = {}
        for envelope in envelopes:
            data = envelope.data
            if named[envelope.subject] == 1 and isinstance(data, WithdrawalRequestedV1):
                withdrawals[envelope.id] = data.account_id
            elif named[envelope.subject] == 1 and isinstance(data, ProfileV1):
                profiles[envelope.id] = data
        accounts = [*withdrawals.values(), *(p.account_id for p in profiles.values())]
        lock_keys(self.database, cursor, [f"mail:{account_id}" for account_id in accounts])
        erased = self._erase_and_confirm_many(cursor, list(withdrawals.values()))
        saved = self._save_contacts(cursor, list(profiles.values()))
        results = []
        for envelope in envelopes:
            if withdrawals.get(envelope.id) in erased:
                results.append(erased[withdrawals[envelope.id]])
            elif envelope.id in profiles and profiles[envelope.id].account_id in saved:
                results.append(HandlerResult(outcome="contact_saved"))
            else:
                results.append(self.handle(envelope, cursor))
        return results

    def _save_contacts(self, cursor: Cursor, profiles: list[ProfileV1]) -> set[UUID]:
        """`_on_profile` for those of the accounts never withdrawn, in one statement (their
        locks held); returns them, the others are left to `handle`."""
        if not profiles:
            return set()
        db = self.database
        where, params = db.any_of("account_id", [str(p.account_id) for p in profiles])
        withdrawn = {
            UUID(account)
            for (account,) in cursor.execute(
                f"SELECT account_id FROM {db.table('suppressions')} WHERE {where}", params
            ).fetchall()
        }
        fresh = [p for p in profiles if p.account_id not in withdrawn]
        if fresh:
            keys = self.sealed.keys_for(cursor, [p.account_id for p in fresh], create=True)
            insert_rows(
                db,
                cursor,
                db.table("contacts"),
                CONTACT_COLUMNS,
                [self._contact_row(keys[p.account_id], p) for p in fresh],
                suffix="ON CONFLICT (account_id) DO UPDATE SET email = excluded.email, "
                "display_name = excluded.display_name, notifications = excluded.notifications, "
                f"updated_at = {db.now}",
            )
        return {p.account_id for p in fresh}

    def _erase_and_confirm_many(
        self, cursor: Cursor, account_ids: list[UUID]
    ) -> dict[UUID, HandlerResult]:
        """`_erase_and_confirm` for those of the accounts whose mail is recorded, in a few
        statements (their locks held); the others are left to `handle`."""
        if not account_ids:
            return {}
        db = self.database
        suppressions = db.table("suppressions")
        where, params = db.any_of("account_id", [str(a) for a in account_ids])
        mailed = cursor.execute(
            f"SELECT account_id FROM {suppressions} WHERE {where} "
            "AND confirmation_sent_at IS NOT NULL",
            params,
        ).fetchall()
        if not mailed:
            return {}
        where, params = db.any_of("account_id", [account for (account,) in mailed])
        held = " + ".join(
            f"(SELECT count(*) FROM {db.table(table)} AS held WHERE held.account_id = s.account_id)"
            for table in ("contacts", "mail_outbox")
        )
        cursor.execute(
            f"UPDATE {suppressions} AS s SET rows_removed = rows_removed + {held}, "
            f"awaiting_address = 0, confirmed_at = {db.now} WHERE {where}",
            params,
        )
        for table in ("contacts", "mail_outbox"):
            cursor.execute(f"DELETE FROM {db.table(table)} WHERE {where}", params)
        self.sealed.destroy(cursor, [UUID(account) for (account,) in mailed])
        totals = cursor.execute(
            f"SELECT account_id, rows_removed FROM {suppressions} WHERE {where}", params
        ).fetchall()
        return {
            UUID(account): HandlerResult(
                (erasure_confirmation(self.topics, UUID(account), SERVICE, int(total)),),
                outcome="erased",
            )
            for account, total in totals
        }

    def _after_withdrawal(self, cursor: Cursor, account_id: UUID) -> HandlerResult:
        db = self.database
        self._lock(cursor, account_id)
        row = cursor.execute(
            f"SELECT confirmation_sent_at FROM {db.table('suppressions')} WHERE account_id = %s",
            (str(account_id),),
        ).fetchone()
        if row is None:
            raise TransientError("suppression_missing")
        if row[0] is not None:
            return self._erase_and_confirm(cursor, account_id)
        known = cursor.execute(
            f"SELECT 1 FROM {db.table('contacts')} WHERE account_id = %s", (str(account_id),)
        ).fetchone()
        if known is not None:
            # The address arrived since step 1 (another member of the group): mail it first.
            raise TransientError("address_arrived")
        dropped = self._delete(cursor, account_id, "mail_outbox")
        cursor.execute(
            f"UPDATE {db.table('suppressions')} SET awaiting_address = 1, "
            "rows_removed = rows_removed + %s WHERE account_id = %s",
            (dropped, str(account_id)),
        )
        log.info("mail.awaiting_address", account_id=str(account_id))
        return HandlerResult(outcome="awaiting_address")

    def _on_profile(self, cursor: Cursor, profile: ProfileV1) -> HandlerResult:
        db = self.database
        account = str(profile.account_id)
        self._lock(cursor, profile.account_id)
        row = cursor.execute(
            "SELECT awaiting_address, confirmation_sent_at, confirmed_at "
            f"FROM {db.table('suppressions')} WHERE account_id = %s",
            (account,),
        ).fetchone()
        if row is None:
            key = self.sealed.keys_for(cursor, [profile.account_id], create=True)
            cursor.execute(
                f"INSERT INTO {db.table('contacts')} "
                "(account_id, email, display_name, notifications) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (account_id) DO UPDATE SET email = excluded.email, "
                "display_name = excluded.display_name, notifications = excluded.notifications, "
                f"updated_at = {db.now}",
                self._contact_row(key[profile.account_id], profile),
            )
            return HandlerResult(outcome="contact_saved")
        awaiting, sent_at, confirmed_at = row
        if awaiting and confirmed_at is None:
            if sent_at is None:
                raise TransientError("confirmation_unsent")
            return self._erase_and_confirm(cursor, profile.account_id)
        # Never keep an address of a withdrawn account.
        return HandlerResult(outcome="refused")

    def _contact_row(self, key: bytes, profile: ProfileV1) -> tuple[str, str, str, str]:
        """A contacts row: the address and name sealed under the account's key."""
        account_id = profile.account_id
        return (
            str(account_id),
            self.sealed.seal(key, account_id, CONTACT_EMAIL, profile.email),
            self.sealed.seal(key, account_id, CONTACT_NAME, profile.display_name),
            json.dumps(profile.notifications),
        )

    def _erase_and_confirm(self, cursor: Cursor, account_id: UUID) -> HandlerResult:
        db = self.database
        account = str(account_id)
        removed = self._delete(cursor, account_id, "contacts")
        removed += self._delete(cursor, account_id, "mail_outbox")
        self.sealed.destroy(cursor, [account_id])
        cursor.execute(
            f"UPDATE {db.table('suppressions')} SET rows_removed = rows_removed + %s, "
            f"awaiting_address = 0, confirmed_at = {db.now} WHERE account_id = %s",
            (removed, account),
        )
        row = cursor.execute(
            f"SELECT rows_removed FROM {db.table('suppressions')} WHERE account_id = %s",
            (account,),
        ).fetchone()
        total = int(row[0]) if row else removed
        return HandlerResult(
            (erasure_confirmation(self.topics, account_id, SERVICE, total),), outcome="erased"
        )

    def _lock(self, cursor: Cursor, account_id: UUID) -> None:
        lock_key(self.database, cursor, f"mail:{account_id}")

    def _delete(self, cursor: Cursor, account_id: UUID, table: str) -> int:
        cursor.execute(
            f"DELETE FROM {self.database.table(table)} WHERE account_id = %s", (str(account_id),)
        )
        return cursor.rowcount


# Notices: the minimal write path and delivery


def queue_notice(
    database: Database, account_id: UUID, *, kind: str, subject: str, body: str
) -> str:
    """Queue a notice for delivery; refused (AccountWithdrawnError) once withdrawn."""
    notice_id = str(uuid4())
    with database.transaction() as cursor:
        lock_key(database, cursor, f"mail:{account_id}")
        if _is_suppressed(database, cursor, account_id):
            raise AccountWithdrawnError()
        cursor.execute(
            f"INSERT INTO {database.table('mail_outbox')} "
            "(notice_id, account_id, kind, subject, body) VALUES (%s, %s, %s, %s, %s)",
            (notice_id, str(account_id), kind, subject, body),
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
    with database.transaction(commit=False) as cursor:
        queued = cursor.execute(
            f"SELECT notice_id, account_id FROM {database.table('mail_outbox')} "
            "ORDER BY queued_at, notice_id LIMIT %s",
            (limit,),
        ).fetchall()
    sent = 0
    for notice_id, account in queued:
        try:
            sent += _deliver_one(database, mailer, sealed, notice_id, UUID(account))
        except _AddressUnknownError:
            continue
    return sent


def _deliver_one(
    database: Database, mailer: Mailer, sealed: SealedValues, notice_id: str, account_id: UUID
) -> int:
    with database.transaction() as cursor:
        lock_key(database, cursor, f"mail:{account_id}")
        notice = cursor.execute(
            f"DELETE FROM {database.table('mail_outbox')} WHERE notice_id = %s "
            "RETURNING kind, subject, body",
            (notice_id,),
        ).fetchone()
        if notice is None or _is_suppressed(database, cursor, account_id):
            return 0
        contact = cursor.execute(
            "SELECT email, display_name, notifications "
            f"FROM {database.table('contacts')} WHERE account_id = %s",
            (str(account_id),),
        ).fetchone()
        if contact is None:
            raise _AddressUnknownError()
        kind, subject, body = notice
        key = sealed.keys_for(cursor, [account_id]).get(account_id)
        email = sealed.open(key, account_id, CONTACT_EMAIL, contact[0])
        display_name = sealed.open(key, account_id, CONTACT_NAME, contact[1])
        notifications = contact[2]
        if email is None or display_name is None:
            raise _AddressUnknownError()
        if json.loads(notifications).get(kind) is False:
            log.info("mail.notice_dropped", account_id=str(account_id), kind=kind)
            return 0
        try:
            message = notice_message(
                notice_id,
                email=email,
                display_name=display_name,
                kind=kind,
                subject=subject,
                body=body,
            )
        except InvalidRecipientError:
            log.warning("mail.recipient_refused", account_id=str(account_id), kind=kind)
            return 0
        mailer.send(message, email)
    log.info("mail.notice_sent", account_id=str(account_id), message_id=message["Message-ID"])
    return 1


# Queries


def contact_known(database: Database, account_id: UUID) -> bool:
    with database.transaction(commit=False) as cursor:
        row = cursor.execute(
            f"SELECT 1 FROM {database.table('contacts')} WHERE account_id = %s",
            (str(account_id),),
        ).fetchone()
    return row is not None


def held_rows(database: Database, account_id: UUID) -> int:
    """Rows that still hold anything personal about the account (address, notices)."""
    return count_rows(database, ("contacts", "mail_outbox"), account_id)


def suppression(database: Database, account_id: UUID) -> dict[str, object] | None:
    with database.transaction(commit=False) as cursor:
        row = cursor.execute(
            "SELECT rows_removed, awaiting_address, confirmation_message_id, "
            "confirmation_sent_at, confirmed_at "
            f"FROM {database.table('suppressions')} WHERE account_id = %s",
            (str(account_id),),
        ).fetchone()
    if row is None:
        return None
    removed, awaiting, message_id, sent_at, confirmed_at = row
    return {
        "rows_removed": int(removed),
        "awaiting_address": bool(awaiting),
        "confirmation_message_id": message_id,
        "confirmation_sent_at": sent_at,
        "confirmed_at": confirmed_at,
    }


def _is_suppressed(database: Database, cursor: Cursor, account_id: UUID) -> bool:
    row = cursor.execute(
        f"SELECT 1 FROM {database.table('suppressions')} WHERE account_id = %s",
        (str(account_id),),
    ).fetchone()
    return row is not None
