"""Steps 1 and 2 of the mail service's withdrawal (see `consumers.mail`), for a poll at once.

Every withdrawal of the poll is suppressed in one transaction before anything else of it is
done, so a suppression waits for no other record; then the confirmation mails go out in one
SMTP session and their sends are recorded in one transaction. The address comes from the
stored contacts or from a profile record of the same poll (two topics keep no order between
them); a profile record for a withdrawal that was awaiting its address mails it here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from uuid import UUID

from consumers.contacts import Contact, Contacts
from consumers.mailer import (
    InvalidRecipientError,
    Mailer,
    confirmation_message,
    message_id_for,
)
from lifecycle.logs import get_logger
from lifecycle.pipeline_metrics import WITHDRAWAL_TO_SUPPRESSION, observe_since
from lifecycle.storage import Database, lock_keys
from schemas.contract import Envelope, ProfileV1, WithdrawalRequestedV1

log = get_logger(__name__)


class WithdrawalMail:
    """Suppress, then mail; idempotent, so a repeat after a failure sends nothing twice while
    the process lives (`_sent_unrecorded`) and only what was not recorded after a crash."""

    def __init__(self, database: Database, mailer: Mailer, contacts: Contacts) -> None:
        self.database = database
        self.mailer = mailer
        self.contacts = contacts
        self._sent_unrecorded: dict[UUID, str] = {}  # account -> Message-ID sent, not recorded

    def prepare(self, envelopes: Sequence[Envelope]) -> None:
        """Steps 1 and 2 for a batch: every withdrawal suppressed in one transaction before
        anything else, then the confirmation mails (one SMTP session), their sends recorded
        in one transaction; also the mail of a withdrawal that was awaiting a profile here."""
        withdrawals: dict[UUID, str] = {}
        profiles: dict[UUID, ProfileV1] = {}
        for envelope in envelopes:
            data = envelope.data
            if isinstance(data, WithdrawalRequestedV1):
                withdrawals.setdefault(data.account_id, envelope.id)
            elif isinstance(data, ProfileV1):
                profiles[data.account_id] = data
        sends: list[tuple[UUID, str, str, str]] = []
        suppressed = self._suppress(withdrawals)
        for envelope in envelopes:
            if isinstance(envelope.data, WithdrawalRequestedV1):
                observe_since(WITHDRAWAL_TO_SUPPRESSION, envelope.data.requested_at)
        for account_id, (ce_id, stored) in suppressed.items():
            late = profiles.get(account_id)
            if stored is not None:
                sends.append((account_id, ce_id, stored.email, stored.display_name))
            elif late is not None:
                sends.append((account_id, ce_id, late.email, late.display_name))
        awaiting = self._awaiting([a for a in profiles if a not in withdrawals])
        sends += [(a, ce_id, profiles[a].email, profiles[a].display_name) for a, ce_id in awaiting]
        self._send_confirmations(sends)

    def _suppress(self, withdrawals: dict[UUID, str]) -> dict[UUID, tuple[str, Contact | None]]:
        """One transaction: suppression rows, queued notices deleted. Returns, per account not
        yet mailed, the withdrawal's `ce_id` and the stored address (None: unknown)."""
        if not withdrawals:
            return {}
        db = self.database
        where, params = db.any_of("account_id", [str(a) for a in withdrawals])
        with db.transaction() as cursor:
            lock_keys(db, cursor, [f"mail:{a}" for a in withdrawals])
            cursor.insert_rows(
                db.table("suppressions"),
                (("account_id", "text"), ("withdrawal_ce_id", "text")),
                [(str(a), ce_id) for a, ce_id in withdrawals.items()],
                suffix="ON CONFLICT DO NOTHING",
            )
            queued = cursor.execute(
                f"SELECT account_id, count(*) FROM {db.table('mail_outbox')} WHERE {where} "
                "GROUP BY account_id",
                params,
            ).fetchall()
            if queued:
                cursor.execute(f"DELETE FROM {db.table('mail_outbox')} WHERE {where}", params)
            for account, dropped in queued:
                cursor.execute(
                    f"UPDATE {db.table('suppressions')} SET rows_removed = rows_removed + %s "
                    "WHERE account_id = %s",
                    (dropped, account),
                )
            unsent = cursor.execute(
                f"SELECT account_id, withdrawal_ce_id FROM {db.table('suppressions')} "
                f"WHERE {where} AND confirmation_sent_at IS NULL",
                params,
            ).fetchall()
            known = self.contacts.of(cursor, list(withdrawals))
        dropped_by = {UUID(account): int(count) for account, count in queued}
        for account_id in withdrawals:
            log.info(
                "mail.suppressed",
                account_id=str(account_id),
                notices_dropped=dropped_by.get(account_id, 0),
            )
        return {UUID(a): (ce_id, known.get(UUID(a))) for a, ce_id in unsent}

    def _awaiting(self, account_ids: list[UUID]) -> list[tuple[UUID, str]]:
        """Of these accounts, those withdrawn before their address arrived, still unmailed."""
        if not account_ids:
            return []
        db = self.database
        where, params = db.any_of("account_id", [str(a) for a in account_ids])
        with db.transaction(commit=False) as cursor:
            rows = cursor.execute(
                f"SELECT account_id, withdrawal_ce_id FROM {db.table('suppressions')} "
                f"WHERE {where} AND awaiting_address = 1 AND confirmation_sent_at IS NULL",
                params,
            ).fetchall()
        return [(UUID(account), ce_id) for account, ce_id in rows]

    def _send_confirmations(self, sends: list[tuple[UUID, str, str, str]]) -> None:
        """Mail each (account, withdrawal ce_id, address, name), then record the sends."""
        if not sends:
            return
        session = getattr(self.mailer, "session", None)
        with session() if session is not None else nullcontext():
            for account_id, withdrawal_ce_id, email, display_name in sends:
                message_id = message_id_for(withdrawal_ce_id)
                if self._sent_unrecorded.get(account_id) == message_id:
                    continue  # sent before a failure to record it: only recorded now
                try:
                    message = confirmation_message(
                        withdrawal_ce_id, email, display_name, account_id
                    )
                except InvalidRecipientError:
                    # Stored before addresses were checked as one mailbox: nothing may be sent
                    # to it, and erasure must not wait for a mail that never can be.
                    log.warning("mail.recipient_refused", account_id=str(account_id))
                else:
                    self.mailer.send(message, email)
                    log.info(
                        "mail.confirmation_sent", account_id=str(account_id), message_id=message_id
                    )
                self._sent_unrecorded[account_id] = message_id
        db = self.database
        sent = [(str(a), message_id_for(ce_id)) for a, ce_id, *_ in sends]
        table, unsent = db.table("suppressions"), "confirmation_sent_at IS NULL"
        values, params = db.dialect.rows([("account_id", "text"), ("message_id", "text")], sent)
        with db.transaction() as cursor:
            lock_keys(db, cursor, [f"mail:{account}" for account, _ in sent])
            cursor.execute(
                f"UPDATE {table} AS s SET confirmation_message_id = v.message_id, "
                f"confirmation_sent_at = {db.now} FROM ({values}) AS v "
                f"WHERE s.account_id = v.account_id AND s.{unsent}",
                params,
            )
        for account_id, *_ in sends:
            self._sent_unrecorded.pop(account_id, None)
