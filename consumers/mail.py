"""The mail service: contact addresses, notices, one withdrawal confirmation, its export part.

Tables in the service's own schema:
- `contacts`: the address, name and notification choices, from the compacted profile topic
  (`consumers.contacts`); the address and name sealed under the account's key
  (`consumers.sealed`, table `sealed_keys`), which the erasure destroys with the row;
- `mail_outbox`: notices queued for delivery, and `mail_notices`: what became of each one
  (sent, dropped, suppressed, with dates, sealed), both in `consumers.notices`;
- `suppressions`: one row per withdrawn account (ids, counts and times only): no notice is
  queued or delivered for it any more, and it records the confirmation mail that was sent.

On WithdrawalRequested, in this order (steps 1 and 2 for all the withdrawals of a poll at once,
before anything else of it, so a suppression waits for no other record):
1. one transaction: the suppression row and the deletion of every queued notice, so from this
   commit on nothing else is sent (delivery checks the suppression under the same lock). The
   suppression lane (`consumers.withdrawal_mail`) has mostly done it already: then step 1 is
   one read-only transaction that finds the row (and the stored address);
2. the withdrawal-complete mail through SMTP (one session for the poll), Message-ID derived
   from the withdrawal's `ce_id`;
3. one transaction (the kit's): step 2's send recorded on the suppression row, the address and
   any remaining notices deleted, and the erasure confirmation (with the rows removed) written
   to the kit's outbox with the processed mark.

At-least-once window: a crash of the process after the SMTP server accepted the mail and before
step 3 commits sends the confirmation again on restart, with the same Message-ID, so a
receiving system can drop the copy. A record that fails while the process lives (a cut database
connection) does not: the handler remembers the send until a transaction that recorded it
commits (`committed`). Everything else is exactly once by the kit's mark.

Two topics carry no order between them. A profile record in the same poll gives the address
at once. When the withdrawal is handled before the member's profile record, it is unknown:
steps 1 and 3 still run at once (nothing more is sent, nothing is held), the suppression row
waits for the address (`awaiting_address`), and when the profile record arrives the mail is
sent to it without the address ever being stored; only then is erasure confirmed. The
profile record always arrives: the relay publishes it with the registration, long before any
withdrawal, and a compacted topic keeps the latest value.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from consumers.contacts import Contacts
from consumers.handler import ExportFailedError, HandlerResult, TransientError
from consumers.mailer import Mailer
from consumers.member_data import OTHER, MemberDataHandler, version_in
from consumers.notices import SUPPRESSIONS, notices_of
from consumers.sealed import SealedValues
from consumers.store import count_rows
from consumers.withdrawal_mail import WithdrawalMail
from lifecycle.keyring import Keyring
from lifecycle.logs import get_logger
from lifecycle.storage import Cursor, Database
from schemas.contract import Envelope, ProfileV1, TopicNames
from schemas.data_export import MailContactV1, MailSectionV1

SERVICE = "mail"
PROFILE = "profile"

log = get_logger(__name__)


# Topics


def subscribed_topics(topics: TopicNames) -> list[str]:
    return list(topics.inputs_of(SERVICE))


# The handler


class MailHandler(MemberDataHandler):
    service = SERVICE
    personal_tables = ("contacts", "mail_outbox", "mail_notices")
    tombstone_table = SUPPRESSIONS
    # `prepare` reads the suppression rows first: for a record handled before, it finds the
    # row written and the mail sent, and does neither again (the kit skips its mark look-up).
    prepare_repeats_harmlessly = True

    def __init__(
        self, database: Database, topics: TopicNames, mailer: Mailer, *, keyring: Keyring
    ) -> None:
        sealed = SealedValues(database, keyring)
        super().__init__(database, topics, sealed)
        self.mailer = mailer
        self.contacts = Contacts(database, sealed)
        self.withdrawal_mail = WithdrawalMail(database, mailer, self.contacts)

    def commits_before_prepare(self, envelope: Envelope) -> bool:
        # `prepare_many` takes a withdrawal's address from the batch's own profile records as
        # well as from the stored contacts: no record needs an earlier one committed.
        return False

    def prepare(self, envelope: Envelope) -> None:
        self.prepare_many([envelope])

    def prepare_many(self, envelopes: Sequence[Envelope]) -> None:
        self.withdrawal_mail.prepare(envelopes)

    def kind_of(self, envelope: Envelope) -> str:
        return PROFILE if isinstance(envelope.data, ProfileV1) else OTHER

    def only_erases(self, envelope: Envelope) -> bool:
        """The profile's tombstone: the contact goes, in Purged's runs."""
        return envelope.is_tombstone and envelope.type == ProfileV1.ce_type()

    def erased(self, envelope: Envelope, rows_removed: int) -> HandlerResult:
        if self.only_erases(envelope):
            return HandlerResult(outcome="contact_erased" if rows_removed else "ignored")
        return super().erased(envelope, rows_removed)

    def handle_many(self, envelopes: Sequence[Envelope], cursor: Cursor) -> list[HandlerResult]:
        """Step 2's sends recorded first (`WithdrawalMail.record`), in this transaction."""
        unrecorded = self.withdrawal_mail.unrecorded()
        self.lock(cursor, [*self.written_accounts(envelopes), *unrecorded])
        self.withdrawal_mail.record(cursor)
        return self.handle_runs(envelopes, cursor)

    def committed(self) -> None:
        self.withdrawal_mail.committed()

    def tombstone(self, cursor: Cursor, account_ids: Sequence[UUID]) -> None:
        """Nothing to add: step 1 wrote the suppression row before the mail was sent."""

    # Step 3: erase and confirm (inside the kit's transaction, the accounts locked)

    def on_withdrawals(self, cursor: Cursor, envelopes: Sequence[Envelope]) -> list[HandlerResult]:
        """Erase and confirm those mailed; those whose address is unknown await it."""
        rows = self._suppressions(cursor, [e.account_id for e in envelopes])
        if any(e.account_id not in rows for e in envelopes):
            raise TransientError("suppression_missing")
        mailed = {e.account_id: version_in(e.id) for e in envelopes if rows[e.account_id][1]}
        unmailed = [e.account_id for e in envelopes if e.account_id not in mailed]
        if self.contacts.known(cursor, unmailed):
            # The address arrived since step 1 (another member of the group): mail it first.
            raise TransientError("address_arrived")
        if unmailed:
            dropped = self._delete_notices(cursor, unmailed)
            self._add_removed(cursor, dropped, "awaiting_address = 1")
            for account_id in unmailed:
                log.info("mail.awaiting_address", account_id=str(account_id))
        erased = self.erase_and_confirm(cursor, mailed)
        awaiting = HandlerResult(outcome="awaiting_address")
        return [erased.get(e.account_id, awaiting) for e in envelopes]

    def record_erasure(self, cursor: Cursor, removed: dict[UUID, int]) -> dict[UUID, int]:
        """The suppression row counts every row removed since step 1: the confirmation
        reports its total."""
        self._add_removed(
            cursor, removed, f"awaiting_address = 0, confirmed_at = {self.database.now}"
        )
        rows = self._suppressions(cursor, list(removed))
        return {a: rows[a][0] if a in rows else count for a, count in removed.items()}

    def export(self, cursor: Cursor, account_id: UUID) -> MailSectionV1:
        """The contact kept (opened) and every notice queued, sent, dropped or suppressed."""
        contact = self.contacts.of(cursor, [account_id]).get(account_id)
        if contact is None and self.contacts.known(cursor, [account_id]):
            raise ExportFailedError("internal_error")  # a contact its key no longer opens
        return MailSectionV1(
            contact=None
            if contact is None
            else MailContactV1(
                email=contact.email,
                display_name=contact.display_name,
                notifications=contact.notifications,
                updated_at=contact.updated_at,
            ),
            notices=notices_of(cursor, self.contacts.sealed, account_id),
        )

    def handle_records(
        self, cursor: Cursor, kind: str, envelopes: Sequence[Envelope]
    ) -> list[HandlerResult]:
        if kind == PROFILE:
            return self._on_profiles(
                cursor, [e.data for e in envelopes if isinstance(e.data, ProfileV1)]
            )
        return super().handle_records(cursor, kind, envelopes)

    def _on_profiles(self, cursor: Cursor, data: Sequence[ProfileV1]) -> list[HandlerResult]:
        """Keep the contacts of accounts never withdrawn; a profile that brings the address a
        withdrawal awaited (its mail sent in `prepare`) completes that erasure; any other
        address of a withdrawn account is refused."""
        rows = self._suppressions(cursor, [p.account_id for p in data])
        # A row only the suppression lane wrote (no mail sent, not awaiting, not confirmed):
        # this service has not handled the withdrawal yet, so the address is kept as if the
        # row were not there, and that handling mails it and erases it (never refused: the
        # profile is not sent again, and the withdrawal would await it for ever).
        ahead = {
            account
            for account, (_, sent, awaiting, confirmed, _) in rows.items()
            if sent is None and not awaiting and confirmed is None
        }
        kept = [p for p in data if p.account_id not in rows or p.account_id in ahead]
        self.contacts.save(cursor, kept)
        completing: dict[UUID, int | None] = {}
        for profile in data:
            row = rows.get(profile.account_id)
            if row is not None and row[2] and row[3] is None:
                if row[1] is None:
                    raise TransientError("confirmation_unsent")
                completing[profile.account_id] = version_in(row[4])
        erased = self.erase_and_confirm(cursor, completing)
        refused = HandlerResult(outcome="refused")  # never keep an address of a withdrawn account
        return [
            erased[p.account_id]
            if p.account_id in erased
            else refused
            if p.account_id in rows and p.account_id not in ahead
            else HandlerResult(outcome="contact_saved")
            for p in data
        ]

    def _suppressions(
        self, cursor: Cursor, account_ids: Sequence[UUID]
    ) -> dict[UUID, tuple[int, object, int, object, str]]:
        """Per account withdrawn: rows removed, confirmation sent at, awaiting its address,
        confirmed at, the withdrawal's `ce_id`."""
        if not account_ids:
            return {}
        where, params = self.database.any_of("account_id", [str(a) for a in account_ids])
        rows = cursor.execute(
            "SELECT account_id, rows_removed, confirmation_sent_at, awaiting_address, "
            f"confirmed_at, withdrawal_ce_id FROM {self.database.table(SUPPRESSIONS)} "
            f"WHERE {where}",
            params,
        ).fetchall()
        return {
            UUID(account): (int(removed), sent_at, int(awaiting), confirmed_at, ce_id)
            for account, removed, sent_at, awaiting, confirmed_at, ce_id in rows
        }

    def _delete_notices(self, cursor: Cursor, account_ids: Sequence[UUID]) -> dict[UUID, int]:
        counts = dict.fromkeys(account_ids, 0)
        where, params = self.database.any_of("account_id", [str(a) for a in account_ids])
        for (account,) in cursor.execute(
            f"DELETE FROM {self.database.table('mail_outbox')} WHERE {where} RETURNING account_id",
            params,
        ).fetchall():
            counts[UUID(account)] += 1
        return counts

    def _add_removed(self, cursor: Cursor, removed: dict[UUID, int], also: str) -> None:
        """Add to each suppression's `rows_removed` and set `also`: one statement per
        distinct count (a batch's counts are mostly equal)."""
        by_count: dict[int, list[str]] = {}
        for account_id, count in removed.items():
            by_count.setdefault(count, []).append(str(account_id))
        for count, accounts in by_count.items():
            where, params = self.database.any_of("account_id", accounts)
            cursor.execute(
                f"UPDATE {self.database.table(SUPPRESSIONS)} "
                f"SET rows_removed = rows_removed + %s, {also} WHERE {where}",
                [count, *params],
            )


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
    return count_rows(database, MailHandler.personal_tables, account_id)


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
