"""What a service writes to use the kit: its `Handler`, the errors it raises, its results.

A handler reacts to one record inside the kit's transaction (`handle`, or `handle_many` for a
batch), with idempotent steps before it (`prepare`, or `prepare_many` for a batch). It raises
`PoisonRecord` for a record that can never be handled; any failure of a dependency (database,
broker, SMTP) is the kit's to wait out (`consumers.faults`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from consumers.store import Outgoing
from lifecycle.storage import Cursor
from schemas.contract import Envelope
from schemas.data_export import ExportFailureCode


class PoisonRecord(Exception):  # noqa: N818 - the kit's published name
    """The record can never be handled; `code` is a stable, data-free reason for the DLQ."""

    is_record_fault = True

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class TransientError(Exception):
    """Not now, maybe later: retried with backoff up to `max_attempts`, then dead-lettered.

    A dependency that is down needs no such error: the kit recognises it and waits."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class ExportFailedError(Exception):
    """A service's `export` cannot produce its part: the kit answers `failed` with `code`."""

    def __init__(self, code: ExportFailureCode) -> None:
        super().__init__(code)
        self.code: ExportFailureCode = code


class AccountWithdrawnError(Exception):
    """A write path refused: the account is withdrawn, so nothing new is kept about it."""

    code = "account_withdrawn"


# Outcomes that say personal rows were deleted: after their commit the kit asks the store to
# leave no copy behind (`Database.after_erasure`: SQLite's WAL truncated, PostgreSQL vacuumed).
ERASURE_OUTCOMES = frozenset({"erased", "purged", "contact_erased"})


@dataclass(frozen=True)
class HandlerResult:
    outgoing: tuple[Outgoing, ...] = ()
    outcome: str = "applied"


class Handler(Protocol):
    """A service's reaction to one record. Subclass it to inherit the no-op `prepare`."""

    # The service's tables that hold personal values: vacuumed (PostgreSQL) after an erasure.
    personal_tables: tuple[str, ...] = ()
    # True when `prepare` may run again for a record already handled (it finds what was done
    # and does nothing twice): the kit then looks no marks up before the transaction.
    prepare_repeats_harmlessly: bool = False

    def prepare(self, envelope: Envelope) -> None:
        """Idempotent steps before the transaction (may run again after a crash or retry)."""
        return None

    def prepare_many(self, envelopes: Sequence[Envelope]) -> None:
        """`prepare` for a run of records that share a transaction, in order: override it to
        do their steps together (one statement, one round trip); by default `prepare` each."""
        for envelope in envelopes:
            self.prepare(envelope)

    def commits_before_prepare(self, envelope: Envelope) -> bool:
        """True when this record's `prepare` must see every earlier record's effect committed
        (it reads what they write), so the batch's transaction is cut before it. By default:
        whenever the handler has a `prepare` of its own."""
        return type(self).prepare is not Handler.prepare

    def committed(self) -> None:
        """The transaction of the last `handle_many` committed: what the handler held in memory
        for it (a send to record) may go. Not called when it failed or its outcome is unknown."""
        return None

    def handle(self, envelope: Envelope, cursor: Cursor) -> HandlerResult:
        """The effect, inside the transaction that also marks the record processed."""
        ...

    def handle_many(self, envelopes: Sequence[Envelope], cursor: Cursor) -> list[HandlerResult]:
        """The effects of a batch's records, in order, in one transaction: override it to
        write many records in one statement; by default `handle` for each."""
        return [self.handle(envelope, cursor) for envelope in envelopes]
