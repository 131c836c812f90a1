"""Steps 1 and 2 of the mail service's withdrawal (see `consumers.mail`), and its fast lane.

Every withdrawal of the poll is suppressed in one transaction before anything else of it is
done, so a suppression waits for no other record (when the lane suppressed them all, only read
back); then the confirmation mails go out in one SMTP session, and their sends are recorded in
the kit's transaction (`record`, `committed`). The address comes from the stored contacts or
from a profile record of the same poll (two topics keep no order between them); a profile
record for a withdrawal that was awaiting its address mails it here too.

`SuppressionLane` runs step 1 alone, ahead of all that, on a consumer group of its own
(`schemas.contract.SUPPRESSION_GROUP`): a withdrawal is suppressed as soon as it is polled,
not behind the kit's poll of mails, profiles and transactions. It only runs ahead: the kit's
step 1 suppresses again (idempotent), so a lane that is down, behind or failing delays a
suppression and never loses one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from datetime import datetime
from functools import partial
from typing import TypeVar
from uuid import UUID

from consumers.contacts import Contact, Contacts
from consumers.faults import DependencyWait, RetryPolicy, infrastructure_fault
from consumers.mailer import (
    InvalidRecipientError,
    Mailer,
    confirmation_message,
    message_id_for,
)
from consumers.notices import SUPPRESSIONS
from lifecycle.kafka.source import Incoming, Source, next_offsets
from lifecycle.logs import get_logger
from lifecycle.pipeline_metrics import WITHDRAWAL_TO_SUPPRESSION, observe_since
from lifecycle.storage import Cursor, Database, lock_keys
from schemas.contract import (
    ContractError,
    Envelope,
    ProfileV1,
    WithdrawalRequestedV1,
    decode_record,
)

log = get_logger(__name__)
T = TypeVar("T")


class WithdrawalMail:
    """Suppress, then mail; idempotent, so a repeat after a failure sends nothing twice while
    the process lives (`_sent_unrecorded`) and only what was not recorded after a crash."""

    def __init__(self, database: Database, mailer: Mailer, contacts: Contacts) -> None:
        self.database = database
        self.mailer = mailer
        self.contacts = contacts
        self._sent_unrecorded: dict[UUID, str] = {}  # account -> Message-ID sent, not recorded
        self._recording: dict[UUID, str] = {}  # what the open transaction records (`record`)

    def prepare(self, envelopes: Sequence[Envelope]) -> None:
        """Steps 1 and 2 for a batch, the sends recorded later, in the kit's transaction
        (`record`). What the suppression rows and stored contacts say is read in one read-only
        transaction: a withdrawal the lane suppressed costs no write here; one it has not yet
        (the lane behind or down) is suppressed here first. Also the mail of a withdrawal that
        was awaiting a profile of this batch."""
        withdrawals = withdrawals_in(envelopes)
        profiles = {e.data.account_id: e.data for e in envelopes if isinstance(e.data, ProfileV1)}
        if not withdrawals and not profiles:
            return
        rows, known = self._read(list(withdrawals), [a for a in profiles if a not in withdrawals])
        missing = {a: w for a, w in withdrawals.items() if a not in rows}
        if missing:
            self.suppress(missing)
            rows.update((a, (ce_id, False, False)) for a, (ce_id, _) in missing.items())
        sends: list[tuple[UUID, str, str, str]] = []
        for account_id, (ce_id, sent, awaiting) in rows.items():
            address = known.get(account_id) if account_id in withdrawals else None
            late = profiles.get(account_id) if account_id in withdrawals or awaiting else None
            if sent:
                continue
            if address is not None:
                sends.append((account_id, ce_id, address.email, address.display_name))
            elif late is not None:
                sends.append((account_id, ce_id, late.email, late.display_name))
        self._send_confirmations(sends)

    def suppress(self, withdrawals: dict[UUID, tuple[str, datetime]]) -> int:
        """Step 1 alone (the lane's), in one transaction; how many were not suppressed yet."""
        if not withdrawals:
            return 0
        with self.database.transaction() as cursor:
            fresh = self._suppress_in(cursor, withdrawals)
        self._suppressed(fresh, withdrawals)
        return len(fresh)

    def unrecorded(self) -> list[UUID]:
        """The accounts whose confirmation was sent and not yet recorded."""
        return list(self._sent_unrecorded)

    def record(self, cursor: Cursor) -> list[UUID]:
        """Step 2's sends not yet recorded, recorded on their suppression rows in the caller's
        transaction (the kit's, the accounts locked by the caller); `committed` forgets them
        once it commits. Returns their accounts."""
        self._recording = dict(self._sent_unrecorded)
        if not self._recording:
            return []
        db = self.database
        sent = [(str(a), message_id) for a, message_id in self._recording.items()]
        values, params = db.dialect.rows([("account_id", "text"), ("message_id", "text")], sent)
        table, unsent = db.table(SUPPRESSIONS), "confirmation_sent_at IS NULL"
        cursor.execute(
            f"UPDATE {table} AS s SET confirmation_message_id = v.message_id, "
            f"confirmation_sent_at = {db.now} FROM ({values}) AS v "
            f"WHERE s.account_id = v.account_id AND s.{unsent}",
            params,
        )
        return list(self._recording)

    def committed(self) -> None:
        """The transaction that recorded the sends (`record`) committed."""
        for account_id, message_id in self._recording.items():
            if self._sent_unrecorded.get(account_id) == message_id:
                del self._sent_unrecorded[account_id]
        self._recording = {}

    def _read(
        self, withdrawn: list[UUID], others: list[UUID]
    ) -> tuple[dict[UUID, tuple[str, bool, bool]], dict[UUID, Contact]]:
        """One read-only transaction: per account of these with a suppression row, its
        withdrawal's `ce_id`, whether its confirmation was sent and whether it awaits its
        address; and the stored contacts of the withdrawn accounts not mailed yet."""
        db = self.database
        where, params = db.any_of("account_id", [str(a) for a in [*withdrawn, *others]])
        with db.transaction(commit=False) as cursor:
            rows = {
                UUID(account): (ce_id, sent_at is not None, bool(awaiting))
                for account, ce_id, sent_at, awaiting in cursor.execute(
                    "SELECT account_id, withdrawal_ce_id, confirmation_sent_at, awaiting_address "
                    f"FROM {db.table(SUPPRESSIONS)} WHERE {where}",
                    params,
                ).fetchall()
            }
            unsent = [a for a in withdrawn if a not in rows or not rows[a][1]]
            known = self.contacts.of(cursor, unsent)
        return rows, known

    def _suppress_in(
        self, cursor: Cursor, withdrawals: dict[UUID, tuple[str, datetime]]
    ) -> dict[UUID, int]:
        """Suppression rows, queued notices deleted (under the accounts' locks); per account
        suppressed by this call (not before), the notices it dropped."""
        db = self.database
        where, params = db.any_of("account_id", [str(a) for a in withdrawals])
        lock_keys(db, cursor, [f"mail:{a}" for a in withdrawals])
        inserted = cursor.insert_rows(
            db.table(SUPPRESSIONS),
            (("account_id", "text"), ("withdrawal_ce_id", "text")),
            [(str(a), ce_id) for a, (ce_id, _) in withdrawals.items()],
            suffix="ON CONFLICT DO NOTHING RETURNING account_id",
        ).fetchall()
        fresh = {UUID(account): 0 for (account,) in inserted}
        queued = cursor.execute(
            f"SELECT account_id, count(*) FROM {db.table('mail_outbox')} WHERE {where} "
            "GROUP BY account_id",
            params,
        ).fetchall()
        if queued:
            cursor.execute(f"DELETE FROM {db.table('mail_outbox')} WHERE {where}", params)
        for account, dropped in queued:
            cursor.execute(
                f"UPDATE {db.table(SUPPRESSIONS)} SET rows_removed = rows_removed + %s "
                "WHERE account_id = %s",
                (dropped, account),
            )
            if UUID(account) in fresh:
                fresh[UUID(account)] = int(dropped)
        return fresh

    def _suppressed(
        self, fresh: dict[UUID, int], withdrawals: dict[UUID, tuple[str, datetime]]
    ) -> None:
        """After the commit: each new suppression logged and timed, once (lane or kit)."""
        for account_id, dropped in fresh.items():
            observe_since(WITHDRAWAL_TO_SUPPRESSION, withdrawals[account_id][1])
            log.info("mail.suppressed", account_id=str(account_id), notices_dropped=dropped)

    def _send_confirmations(self, sends: list[tuple[UUID, str, str, str]]) -> None:
        """Mail each (account, withdrawal ce_id, address, name); `record` records the sends."""
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
                    self.mailer.send(message, email)
                except InvalidRecipientError:
                    # Not exactly one mailbox (stored before addresses were checked), or one
                    # that cannot be written or sent: erasure must not wait for a mail that
                    # never can be.
                    log.warning("mail.recipient_refused", account_id=str(account_id))
                else:
                    log.info(
                        "mail.confirmation_sent", account_id=str(account_id), message_id=message_id
                    )
                self._sent_unrecorded[account_id] = message_id


def withdrawals_in(envelopes: Sequence[Envelope]) -> dict[UUID, tuple[str, datetime]]:
    """Per account withdrawn in `envelopes`: its first withdrawal's `ce_id` and request time."""
    found: dict[UUID, tuple[str, datetime]] = {}
    for envelope in envelopes:
        data = envelope.data
        if isinstance(data, WithdrawalRequestedV1):
            found.setdefault(data.account_id, (envelope.id, data.requested_at))
    return found


WITHDRAWAL_TYPE = WithdrawalRequestedV1.ce_type().encode()


class SuppressionLane:
    """Step 1 on its own consumer group over the lifecycle topic (see the module docstring).

    Per poll: the withdrawals decoded (other records are not even decoded: their `ce_type`
    header says what they are), suppressed in one transaction, then the offsets committed
    (at least once: never before the suppression committed). A dependency that is down is
    waited out with backoff; any other failure is logged and the poll passed over, since the
    kit suppresses the same withdrawals in its own step 1 (and dead-letters a record that
    breaks the contract)."""

    name = "mail-suppression"

    def __init__(
        self,
        mail: WithdrawalMail,
        source: Source,
        *,
        retry: RetryPolicy | None = None,
        poll_timeout_s: float = 0.5,
    ) -> None:
        self.mail = mail
        self.source = source
        self.retry = retry or RetryPolicy()
        self.poll_timeout_s = poll_timeout_s
        self._log = log.bind(consumer="mail-suppression")
        self._wait = DependencyWait(self._log, "mail_suppression")

    @property
    def waiting_for(self) -> str | None:
        return self._wait.waiting_for

    def run(self, stop: threading.Event) -> None:
        self._log.info("mail_suppression.started")
        try:
            while not stop.is_set():
                batch = self._attempt(lambda: self.source.poll(self.poll_timeout_s), stop, "poll")
                if not batch:
                    continue
                done = self._attempt(
                    partial(self.mail.suppress, self._withdrawals(batch)), stop, "suppress"
                )
                if done is not None or not stop.is_set():  # or passed over to the kit (logged)
                    self._commit(batch)
        finally:
            try:
                self.source.close()
            finally:
                self._log.info("mail_suppression.stopped")

    def _withdrawals(self, batch: Sequence[Incoming]) -> dict[UUID, tuple[str, datetime]]:
        envelopes: list[Envelope] = []
        for incoming in batch:
            if ("ce_type", WITHDRAWAL_TYPE) not in incoming.headers:
                continue
            try:
                envelopes.append(decode_record(incoming.headers, incoming.value, incoming.topic))
            except ContractError:
                continue  # the kit dead-letters it
        return withdrawals_in(envelopes)

    def _attempt(self, work: Callable[[], T], stop: threading.Event, step: str) -> T | None:
        """`work()`, waited out while a dependency is down (a failed poll is the broker's)."""

        def fault(error: BaseException) -> str | None:
            return infrastructure_fault(error) or ("broker" if step == "poll" else None)

        return self._wait.attempt(work, stop, self.retry.backoff, step, fault)

    def _commit(self, batch: Sequence[Incoming]) -> None:
        try:
            self.source.commit(next_offsets(batch))
        except Exception as error:  # the records come again: suppressing twice is harmless
            self._log.warning("mail_suppression.commit_failed", error=type(error).__name__)
