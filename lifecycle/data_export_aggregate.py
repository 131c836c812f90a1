"""The DataExport aggregate: one member's copy of their data, from request to expiry. Pure.

It lives in the event store beside the accounts (the Account aggregate keeps exactly its six
events) and holds no personal value: ids, service names, failure codes, times and the export's
public key. The parts themselves rest sealed beside it (lifecycle.data_export.parts), under a
private key that only this service holds (lifecycle.data_export.keys).

States: `requested` (parts outstanding), `ready` (every part in: downloadable until
`expires_at`), `expired` and `cancelled` (the key is destroyed: nothing opens any more).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from lifecycle import event_names

# The lifecycle service's own part: the account as the member sees it.
OWN_PART = "lifecycle"


class ExportStatus(StrEnum):
    REQUESTED = "requested"
    READY = "ready"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


LIVE = frozenset({ExportStatus.REQUESTED, ExportStatus.READY})


class DataExport(Aggregate):
    """One export. Each class's `TOPIC` is its stored name (lifecycle.event_names)."""

    TOPIC = event_names.DATA_EXPORT

    class Event(Aggregate.Event):
        personal_fields: ClassVar[tuple[str, ...]] = ()

        def apply(self, aggregate: Any) -> None:
            aggregate.fold(self)

    class Created(Event, Aggregate.Created):
        """Never recorded (exports begin with Requested); named because every aggregate
        has one."""

        TOPIC = event_names.DATA_EXPORT_CREATED_UNUSED

    class Requested(Event, Aggregate.Created):
        TOPIC = event_names.DATA_EXPORT_REQUESTED
        account_id: UUID
        public_key: str
        services: list[str]
        due_at: datetime
        expires_at: datetime

    class PartReceived(Event):
        TOPIC = event_names.DATA_EXPORT_PART_RECEIVED
        service: str
        part_id: str

    class PartFailed(Event):
        TOPIC = event_names.DATA_EXPORT_PART_FAILED
        service: str
        failure_code: str

    class RetryRequested(Event):
        TOPIC = event_names.DATA_EXPORT_RETRY_REQUESTED
        services: list[str]

    class Readied(Event):
        TOPIC = event_names.DATA_EXPORT_READIED
        expires_at: datetime

    class Ended(Event):
        """Expired or cancelled: the private key is destroyed with this event's record."""

        TOPIC = event_names.DATA_EXPORT_ENDED
        status: str
        reason: str

    account_id: UUID
    public_key: str
    services: list[str]
    status: ExportStatus
    requested_at: datetime
    due_at: datetime
    expires_at: datetime
    ready_at: datetime | None
    received: dict[str, str]
    failed: dict[str, str]
    retries: int
    ended_at: datetime | None
    end_reason: str | None

    def __init__(self) -> None:
        """State starts empty; Requested fills it in through fold()."""

    @classmethod
    def request(
        cls,
        *,
        export_id: UUID,
        account_id: UUID,
        public_key: str,
        services: list[str],
        at: datetime,
        deadline: timedelta,
        expiry: timedelta,
    ) -> DataExport:
        """A new export: parts are due within `deadline`; the key lives at most until the
        deadline plus `expiry` (a ready export's download window is `expiry` from then)."""
        return cls._create(
            cls.Requested,
            id=export_id,
            account_id=account_id,
            public_key=public_key,
            services=list(services),
            due_at=at + deadline,
            expires_at=at + deadline + expiry,
        )

    def fold(self, event: Aggregate.Event) -> None:
        match event:
            case DataExport.Requested():
                self.account_id = event.account_id
                self.public_key = event.public_key
                self.services = list(event.services)
                self.status = ExportStatus.REQUESTED
                self.requested_at = event.timestamp
                self.due_at = event.due_at
                self.expires_at = event.expires_at
                self.ready_at = None
                self.received = {}
                self.failed = {}
                self.retries = 0
                self.ended_at = None
                self.end_reason = None
            case DataExport.PartReceived():
                self.received[event.service] = event.part_id
                self.failed.pop(event.service, None)
            case DataExport.PartFailed():
                self.failed[event.service] = event.failure_code
            case DataExport.RetryRequested():
                self.retries += 1
                for service in event.services:
                    self.failed.pop(service, None)
            case DataExport.Readied():
                self.status = ExportStatus.READY
                self.ready_at = event.timestamp
                self.expires_at = event.expires_at
            case DataExport.Ended():
                self.status = ExportStatus(event.status)
                self.ended_at = event.timestamp
                self.end_reason = event.reason

    # Commands: each records nothing when it would change nothing (redeliveries are harmless).

    @property
    def is_live(self) -> bool:
        return self.status in LIVE

    @property
    def outstanding(self) -> list[str]:
        """The parts not received yet (failed ones included)."""
        return [s for s in [OWN_PART, *self.services] if s not in self.received]

    def receive_part(
        self, service: str, part_id: UUID, *, now: datetime, expiry: timedelta
    ) -> bool:
        """A complete, valid part; the first one per service counts (True: recorded). The
        last one outstanding makes the export ready."""
        if not self.is_live or service in self.received or not self._expects(service):
            return False
        self.trigger_event(self.PartReceived, service=service, part_id=str(part_id))
        if not self.outstanding:
            # The download window starts when the export is ready, within the key's lifetime.
            self.trigger_event(self.Readied, expires_at=min(now + expiry, self.expires_at))
        return True

    def fail_part(self, service: str, failure_code: str) -> bool:
        if not self.is_live or service in self.received or not self._expects(service):
            return False
        if self.failed.get(service) == failure_code:
            return False
        self.trigger_event(self.PartFailed, service=service, failure_code=failure_code)
        return True

    def retry(self, services: list[str]) -> list[str]:
        """Ask these services again (those still outstanding); returns the ones asked."""
        asked = [s for s in services if s in self.services and s not in self.received]
        if self.status is ExportStatus.REQUESTED and asked:
            self.trigger_event(self.RetryRequested, services=asked)
            return asked
        return []

    def end(self, status: ExportStatus, reason: str) -> bool:
        if not self.is_live:
            return False
        self.trigger_event(self.Ended, status=status.value, reason=reason)
        return True

    def is_past_expiry(self, now: datetime) -> bool:
        return now >= self.expires_at

    def is_overdue(self, now: datetime) -> bool:
        return self.status is ExportStatus.REQUESTED and now > self.due_at

    def _expects(self, service: str) -> bool:
        return service == OWN_PART or service in self.services
