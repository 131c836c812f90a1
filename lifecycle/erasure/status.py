"""The erasure status: one vocabulary and the one function that computes it.

Every reader asks `erasure_status`: the member route and `lifecycle audit erasure-proof` (facts
from the event store, `lifecycle.erasure.queries`) and the ops API (facts from the read model,
`projections.erasure`). Per-service facts come from the two tables the process keeps
(`lifecycle.erasure.records`). Pure: no I/O, so the deadline applies at query time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal
from uuid import UUID

# An erasure's state.
NOT_REQUESTED: Final = "not_requested"
REQUESTED: Final = "requested"
PURGED: Final = "purged"
ErasureState = Literal["not_requested", "requested", "purged"]
# One service's state. `confirmed` and `failed` are what the service said (the outcomes the
# process records); `retry_requested` is ops' request since its last word.
PENDING: Final = "pending"
CONFIRMED: Final = "confirmed"
FAILED: Final = "failed"
RETRY_REQUESTED: Final = "retry_requested"
ServiceState = Literal["pending", "confirmed", "failed", "retry_requested"]


@dataclass(frozen=True)
class ServiceRecord:
    """A service's recorded word on one account (a row of the confirmations table)."""

    outcome: str
    rows_removed: int
    error_code: str | None
    recorded_at: datetime | None
    confirmation_id: str


@dataclass(frozen=True)
class RetryRecord:
    """Ops' retry requests for one service (a row of the retries table)."""

    requested_at: datetime | None
    attempts: int


@dataclass(frozen=True)
class ServiceProgress:
    state: ServiceState
    rows_removed: int | None
    error_code: str | None
    recorded_at: datetime | None
    retries: int
    last_retry_at: datetime | None


@dataclass(frozen=True)
class ErasureStatus:
    account_id: UUID
    state: ErasureState
    reason: str | None
    requested_at: datetime | None
    deadline_at: datetime | None
    purged_at: datetime | None
    overdue: bool
    errored: bool
    services: dict[str, ServiceProgress]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def erasure_status(
    account_id: UUID,
    *,
    requested_at: datetime | None,
    purged_at: datetime | None,
    reason: str | None,
    records: Mapping[str, ServiceRecord],
    retries: Mapping[str, RetryRecord],
    services: tuple[str, ...],
    deadline: timedelta,
    now: datetime,
) -> ErasureStatus:
    """Where one account's erasure stands at `now`."""
    progress = {
        service: service_progress(records.get(service), retries.get(service))
        for service in services
    }
    open_ = requested_at is not None and purged_at is None
    deadline_at = requested_at + deadline if requested_at is not None else None
    return ErasureStatus(
        account_id=account_id,
        state=_state_of(requested_at, purged_at),
        reason=reason,
        requested_at=requested_at,
        deadline_at=deadline_at,
        purged_at=purged_at,
        overdue=open_ and deadline_at is not None and now > deadline_at,
        errored=open_ and any(p.state == FAILED for p in progress.values()),
        services=progress,
    )


def service_progress(record: ServiceRecord | None, retry: RetryRecord | None) -> ServiceProgress:
    """A retry shows as `retry_requested` until the service's next word (a confirmation is
    final: a retry never hides it)."""
    state: ServiceState = PENDING
    if record is not None:
        state = CONFIRMED if record.outcome == CONFIRMED else FAILED
    if retry is not None and state != CONFIRMED:
        heard_at = None if record is None else record.recorded_at
        if heard_at is None or retry.requested_at is None or retry.requested_at >= heard_at:
            state = RETRY_REQUESTED
    return ServiceProgress(
        state=state,
        rows_removed=None if record is None else record.rows_removed,
        error_code=None if record is None else record.error_code,
        recorded_at=None if record is None else record.recorded_at,
        retries=0 if retry is None else retry.attempts,
        last_retry_at=None if retry is None else retry.requested_at,
    )


def _state_of(requested_at: datetime | None, purged_at: datetime | None) -> ErasureState:
    if purged_at is not None:
        return PURGED
    return REQUESTED if requested_at is not None else NOT_REQUESTED
