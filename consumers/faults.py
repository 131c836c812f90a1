"""Whose fault a failure is: a dependency that is down (wait) or the record (dead-letter it).

A database cut, a broker away or an SMTP relay refusing connections says nothing about the
record: the consumer waits with backoff, with no attempt limit, and goes on when it returns.
Only what the record itself causes (a broken contract, a rule it breaks) is dead-lettered.
"""

from __future__ import annotations

import smtplib
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError
from kafka.errors import KafkaError
from pydantic import ValidationError

from consumers.handler import PoisonRecord
from lifecycle.kafka.producer import PublishError
from lifecycle.kafka.source import Incoming
from schemas.contract import ContractError

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
DLQ_HEADERS = (
    DLQ_ERROR_TYPE,
    DLQ_ERROR_CODE,
    "dlq_consumer_group",
    "dlq_source_topic",
    "dlq_source_partition",
    "dlq_source_offset",
    "dlq_attempts",
    "dlq_failed_at",
)


def dead_letter_headers(
    incoming: Incoming, error: BaseException, code: str, attempts: int, group: str
) -> list[tuple[str, bytes]]:
    """The original headers plus `dlq_*` ones: the error's class and code, never its text
    (which may quote personal values)."""
    return [
        *incoming.headers,
        (DLQ_ERROR_TYPE, type(error).__name__.encode()),
        (DLQ_ERROR_CODE, code.encode()),
        ("dlq_consumer_group", group.encode()),
        ("dlq_source_topic", incoming.topic.encode()),
        ("dlq_source_partition", str(incoming.partition).encode()),
        ("dlq_source_offset", str(incoming.offset).encode()),
        ("dlq_attempts", str(attempts).encode()),
        ("dlq_failed_at", datetime.now(UTC).isoformat().encode()),
    ]


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for every wait; `max_attempts` bounds only failures of unknown cause (a bug
    the record triggers): a dependency that is down is waited out without a limit."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0


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
