"""The erasure process's intake: confirmation records from the consumer kit become
`Confirmation`s attributed to a service by their topic, verified, and handed to
`lifecycle.erasure.process`."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from consumers.handler import Handler, HandlerResult, PoisonRecord
from lifecycle.crypto import KEYS_TABLE
from lifecycle.erasure.process import Confirmation, ErasureProcess
from lifecycle.erasure.status import CONFIRMED, FAILED
from lifecycle.errors import ConcurrentUpdateError, LifecycleError
from lifecycle.storage import Cursor
from schemas.contract import Envelope, ErasureConfirmedV1, ErasureConfirmedV2, TopicNames


class ConfirmationIntake(Handler):
    """Confirmations in; `ErasureProcess` records them and purges once all services confirmed.

    Each confirmation is attributed to the service whose topic it came on (`topics`); on any
    other topic it is refused. With `legacy` (a rolling upgrade, off by default) the shared
    topic of earlier releases is read too, and a confirmation there is attributed by its
    payload: weaker, as anyone allowed to write that topic can confirm for any service.

    The process writes in transactions of its own (the purge goes through the event store), so
    it runs in `prepare_many`, once for a poll's confirmations; it is idempotent, so a repeat
    after a crash changes nothing.

    On PostgreSQL a confirmation that completed a purge is handled with the outcome `purged`,
    so the kit vacuums the destroyed keys' table (`personal_tables`) once the batch's offsets
    are committed, off the path of the confirmations that wait for the next poll. SQLite's
    checkpoint holds the one writer's lock: it stays right after the purge, as before.
    """

    personal_tables = (KEYS_TABLE,)

    def __init__(
        self, process: ErasureProcess, topics: TopicNames, *, legacy: bool = False
    ) -> None:
        self.process = process
        self.topics = topics
        self.legacy = legacy
        self._refused: set[str] = set()
        self._purged: set[UUID] = set()  # accounts the last prepared batch purged

    def commits_before_prepare(self, envelope: Envelope) -> bool:
        # PostgreSQL: a poll's confirmations are prepared, and their completions purged,
        # together (`ErasureProcess.handle_many` undoes them all if one fails). SQLite records
        # each before acting on it, so each is a run of its own and only the culprit fails.
        return not self.process.database.dialect.concurrent_writers

    def prepare(self, envelope: Envelope) -> None:
        self.prepare_many([envelope])

    def prepare_many(self, envelopes: Sequence[Envelope]) -> None:
        confirmations: list[Confirmation] = []
        refused: list[tuple[Confirmation, str]] = []
        for envelope in envelopes:
            data = envelope.data
            if not isinstance(data, ErasureConfirmedV1 | ErasureConfirmedV2):
                continue
            service = self.service_of(envelope.topic, data)
            # Version 1 (services not upgraded yet) always means erased; version 2 says
            # erased, or failed with a code from the contract's fixed list.
            failed = isinstance(data, ErasureConfirmedV2) and data.outcome == "failed"
            confirmation = Confirmation(
                account_id=data.account_id,
                service=service or data.service,
                outcome=FAILED if failed else CONFIRMED,
                rows_removed=data.rows_removed,
                confirmation_id=envelope.id,
                error_code=data.failure_code if isinstance(data, ErasureConfirmedV2) else None,
                confirmed_at=data.confirmed_at,
            )
            if service is None:
                refused.append((confirmation, "unattributed"))
            elif data.service != service:
                refused.append((confirmation, "service_mismatch"))
            else:
                confirmations.append(confirmation)
        accepted, unverified = self.process.verified(confirmations)
        refused += unverified
        if refused:
            self.process.refuse(refused)  # one transaction for the poll's refusals
        self._refused = {c.confirmation_id for c, _ in refused}
        self._purged = set()
        if not accepted:
            return
        deferred = self.process.database.dialect.concurrent_writers
        try:
            purged = self.process.handle_many(accepted, verified=True, after_purges=not deferred)
            self._purged = purged if deferred else set()
        except ConcurrentUpdateError:
            raise  # someone else's progress: retried
        except LifecycleError as error:
            # In a batch, the kit then prepares each record alone: only the culprit is poison.
            raise PoisonRecord(error.code) from None

    def service_of(
        self, topic: str | None, data: ErasureConfirmedV1 | ErasureConfirmedV2
    ) -> str | None:
        """The service a confirmation is from: its topic's; None when no topic vouches."""
        if topic is None:
            return None
        service = self.topics.service_of_confirmation_topic(topic)
        if service is None and self.legacy and topic == self.topics.legacy_erasure_confirmed:
            return data.service
        return service

    def handle(self, envelope: Envelope, cursor: Cursor) -> HandlerResult:
        if isinstance(envelope.data, ErasureConfirmedV1 | ErasureConfirmedV2):
            if envelope.id in self._refused:
                return HandlerResult(outcome="confirmation_refused")
            if envelope.data.account_id in self._purged:
                self._purged.discard(envelope.data.account_id)  # one per purge
                return HandlerResult(outcome="purged")
            return HandlerResult(outcome="confirmation_handled")
        return HandlerResult(outcome="ignored")
