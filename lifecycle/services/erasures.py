"""Erasures for ops: pages and counts from the read model, one account's status, and the
retry of one lagging service.

A retry is recorded (the service shows `retry_requested` until its next word) and, with Kafka
configured, the account's WithdrawalRequested record is published again, encoded as the relay
encodes it (`lifecycle.publishing`) under a fresh retry id: a service that never handled it
(dead-lettered, or behind) erases and confirms; services that did erase nothing more and
confirm again, which changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from lifecycle.application import Accounts
from lifecycle.domain import Account
from lifecycle.erasure.records import ErasureRecords
from lifecycle.erasure.status import CONFIRMED, ErasureStatus
from lifecycle.errors import AccountNotFoundError, ConflictError, InvalidCommandError
from lifecycle.kafka.inspector import KafkaInspector
from lifecycle.logs import get_logger
from lifecycle.publishing import lifecycle_record
from lifecycle.services.actions import Actor
from projections.base import facts_mapper
from projections.erasure import ErasureQuery, ErasureStatusView
from schemas.contract import ERASING_SERVICES, Record

log = get_logger(__name__)


@dataclass(frozen=True)
class RetryRequested:
    account_id: UUID
    service: str
    attempts: int
    redelivered: bool


class Erasures:
    def __init__(
        self,
        accounts: Accounts,
        view: ErasureStatusView,
        deadline: timedelta,
        kafka: KafkaInspector | None = None,
    ) -> None:
        self.accounts = accounts
        self.query = ErasureQuery(view, deadline)
        self.records = ErasureRecords(accounts.database)
        self.kafka = kafka

    def page(
        self, state: str, *, after: UUID | None = None, limit: int = 100
    ) -> tuple[dict[str, int], list[ErasureStatus]]:
        """Counts by state, and a page of erasures in `state` (see ERASURE_FILTERS)."""
        return self.query.counts(), self.query.page(state, after=after, limit=limit)

    def get(self, account_id: UUID, now: datetime | None = None) -> ErasureStatus:
        found = self.query.get(account_id, now)
        if found is None:
            raise AccountNotFoundError(detail="no erasure was requested for this account")
        return found

    def retry(self, account_id: UUID, service: str, actor: Actor) -> RetryRequested:
        """Ask `service` again; refused for an unknown service, an account never withdrawn or
        already purged, and a service that already confirmed."""
        if service not in ERASING_SERVICES:
            raise InvalidCommandError("unknown_service", detail="not an erasing service")
        erasure = self.get(account_id)
        if erasure.purged_at is not None:
            raise ConflictError("erasure_complete", detail="the account is already purged")
        if erasure.services[service].state == CONFIRMED:
            raise ConflictError("service_confirmed", detail="this service already confirmed")
        attempts = self.records.request_retry(account_id, service)
        redelivered = False
        if self.kafka is not None and self.kafka.configured:
            record = self.withdrawal_record(account_id)
            self.kafka.publish(self.kafka.topics.lifecycle, *record)
            redelivered = True
        log.info(
            "erasure.retry_requested",
            account_id=str(account_id),
            service=service,
            attempts=attempts,
            redelivered=redelivered,
            role=actor.role,
            request_id=actor.request_id,
        )
        return RetryRequested(account_id, service, attempts, redelivered)

    def withdrawal_record(self, account_id: UUID) -> Record:
        """The account's WithdrawalRequested record as the relay made it, under a retry id."""
        mapper = facts_mapper(self.accounts.mapper)
        for stored in self.accounts.recorder.select_events(account_id, desc=True):
            event = mapper.to_domain_event(stored)
            if isinstance(event, Account.WithdrawalRequested):
                record = lifecycle_record(event, retry=True)
                assert record is not None, "WithdrawalRequested is in the contract"
                return record
        raise ConflictError("erasure_not_requested", detail="withdrawal was never requested")
