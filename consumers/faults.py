"""Whose fault a failure is: a dependency that is down (wait) or the record (dead-letter it).

A database cut, a broker away or an SMTP relay refusing connections says nothing about the
record: the consumer waits with backoff, with no attempt limit, and goes on when it returns.
Only what the record itself causes (a broken contract, a rule it breaks) is dead-lettered.

A dead letter is a reference, never a copy: the source record's key (the account id), the
`dlq_*` headers naming where it rests (topic, partition, offset) and why it failed, and the
original `ce_id`, `ce_type` and `ce_subject`; its value is null. Re-drive reads the original
from its source topic, so the source topic's own compaction (profile) or retention (lifecycle)
erases the only copy of a purged member's values, dead letters included.
"""

from __future__ import annotations

import re
import smtplib
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError
from kafka.errors import KafkaError
from pydantic import ValidationError

from consumers.handler import PoisonRecord
from lifecycle.backoff import Backoff
from lifecycle.kafka.producer import PublishError
from lifecycle.kafka.source import Incoming
from schemas.contract import ContractError, Record

T = TypeVar("T")

DATABASE_FAULTS = (
    psycopg.OperationalError,  # includes a pool timeout, a deadlock, a serialization failure
    psycopg.InterfaceError,
    OperationalError,  # the library's renames of the two above (and of SQLite's)
    InterfaceError,
    sqlite3.OperationalError,  # "database is locked"
)
RECORD_FAULTS = (ContractError, ValidationError)

DLQ_ERROR_TYPE = "dlq_error_type"
DLQ_ERROR_CODE = "dlq_error_code"
DLQ_SOURCE_TOPIC = "dlq_source_topic"
DLQ_SOURCE_PARTITION = "dlq_source_partition"
DLQ_SOURCE_OFFSET = "dlq_source_offset"
DLQ_HEADERS = (
    DLQ_ERROR_TYPE,
    DLQ_ERROR_CODE,
    "dlq_consumer_group",
    DLQ_SOURCE_TOPIC,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_OFFSET,
    "dlq_attempts",
    "dlq_failed_at",
)

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# The original headers a dead letter keeps, each only in the shape the contract gives it
# (ids and types): a record that breaks the contract may carry anything in any header.
REFERENCE_HEADERS: dict[str, re.Pattern[str]] = {
    "ce_id": re.compile(rf"{_UUID}(:[a-z0-9-]{{1,40}}){{0,3}}"),
    "ce_type": re.compile(r"[a-z0-9]+(\.[a-z0-9-]+){1,8}"),
    "ce_subject": re.compile(_UUID),
}
KEY_SHAPE = re.compile(_UUID)


def _shaped(pattern: re.Pattern[str], raw: bytes | None) -> bool:
    if raw is None or len(raw) > 200:
        return False
    try:
        return pattern.fullmatch(raw.decode("ascii")) is not None
    except UnicodeDecodeError:
        return False


def dead_letter_headers(
    incoming: Incoming, error: BaseException, code: str, attempts: int, group: str
) -> list[tuple[str, bytes]]:
    """The original `ce_id`/`ce_type`/`ce_subject` (when shaped as ids) plus `dlq_*` headers:
    the error's class and code, never its text (which may quote personal values)."""
    kept = [
        (name, value)
        for name, value in incoming.headers
        if name in REFERENCE_HEADERS and _shaped(REFERENCE_HEADERS[name], value)
    ]
    return [
        *kept,
        (DLQ_ERROR_TYPE, type(error).__name__.encode()),
        (DLQ_ERROR_CODE, code.encode()),
        ("dlq_consumer_group", group.encode()),
        (DLQ_SOURCE_TOPIC, incoming.topic.encode()),
        (DLQ_SOURCE_PARTITION, str(incoming.partition).encode()),
        (DLQ_SOURCE_OFFSET, str(incoming.offset).encode()),
        ("dlq_attempts", str(attempts).encode()),
        ("dlq_failed_at", datetime.now(UTC).isoformat().encode()),
    ]


def dead_letter_record(
    incoming: Incoming, error: BaseException, code: str, attempts: int, group: str
) -> Record:
    """The dead letter of `incoming`: a reference to it, with a null value (never a copy).

    The key is the source's (the account id, so the dead letter is found by account) when it
    is shaped as one; anything else is dropped, as the source record keeps it."""
    key = incoming.key if _shaped(KEY_SHAPE, incoming.key) else None
    return Record(key or b"", dead_letter_headers(incoming, error, code, attempts, group), None)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for every wait; `max_attempts` bounds only failures of unknown cause (a bug
    the record triggers): a dependency that is down is waited out without a limit."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.initial_backoff_s, self.max_backoff_s)


def record_fault_code(error: BaseException) -> str | None:
    """The DLQ code of a failure the record itself causes; None for any other failure."""
    if isinstance(error, PoisonRecord):
        return error.code
    if isinstance(error, ContractError):
        return "contract_violation"
    if isinstance(error, ValidationError):
        return "validation_failed"
    return None


def infrastructure_fault(error: BaseException) -> str | None:
    """The dependency `error` says is unavailable ('database', 'broker', 'network'), or None.

    Follows the chain of causes, so a failure raised while handling a cut connection counts
    as the cut; an error the record causes anywhere in the chain wins.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    found: str | None = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, RECORD_FAULTS) or getattr(current, "is_record_fault", False):
            return None
        found = found or _dependency(current)
        current = current.__cause__ or current.__context__
    return found


def _dependency(error: BaseException) -> str | None:
    if isinstance(error, DATABASE_FAULTS):
        return "database"
    if isinstance(error, KafkaError | PublishError):
        return "broker"
    if isinstance(error, smtplib.SMTPRecipientsRefused | smtplib.SMTPSenderRefused):
        return None  # the address itself is refused: waiting will not change that
    if isinstance(error, smtplib.SMTPResponseException) and error.smtp_code >= 500:
        return None
    if isinstance(error, OSError):  # refused, reset, timed out, SMTP disconnected
        return "network"
    return None


class DependencyWait:
    """Which dependency a loop waits for, and since when; it logs entering and leaving the wait
    (`<name>.recovered` with `waited_s`). `waiting_for` is what readiness reads."""

    def __init__(self, log: Any, name: str) -> None:
        self._log = log
        self._name = name
        self._since = 0.0
        self.waiting_for: str | None = None

    def waiting(self, dependency: str, event: str, **fields: Any) -> None:
        if self.waiting_for is None:
            self._since = time.monotonic()
        self.waiting_for = dependency
        self._log.warning(event, dependency=dependency, **fields)

    def recovered(self) -> None:
        if self.waiting_for is not None:
            waited = round(time.monotonic() - self._since, 3)
            self._log.info(f"{self._name}.recovered", dependency=self.waiting_for, waited_s=waited)
            self.waiting_for = None

    def attempt(
        self,
        work: Callable[[], T],
        stop: threading.Event,
        backoff: Backoff,
        step: str,
        fault: Callable[[BaseException], str | None] = infrastructure_fault,
    ) -> T | None:
        """`work()`, repeated on `backoff` while `fault` names a dependency that is down; None
        when `stop` was set meanwhile, or when it failed otherwise (logged `<name>.failed`)."""
        delays = backoff.delays()
        while not stop.is_set():
            try:
                result = work()
            except Exception as error:
                dependency = fault(error)
                if dependency is None:
                    self._log.warning(f"{self._name}.failed", step=step, error=type(error).__name__)
                    return None
                self.waiting(
                    dependency,
                    f"{self._name}.waiting",
                    step=step,
                    error=type(error).__name__,
                    retry_in_s=delays.next_s,
                )
                delays.wait(stop)
                continue
            self.recovered()
            return result
        return None
