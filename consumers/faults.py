"""Whose fault a failure is: a dependency that is down (wait for it) or the record (dead-letter it).

A database cut, a broker away or an SMTP relay refusing connections says nothing about the
record: the consumer waits with backoff, with no attempt limit, and goes on when it returns.
Only what the record itself causes (a broken contract, a rule it breaks) is dead-lettered.
"""

from __future__ import annotations

import smtplib
import sqlite3

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError
from kafka.errors import KafkaError
from pydantic import ValidationError

from lifecycle.transport import PublishError
from schemas.contract import ContractError

DATABASE_FAULTS = (
    psycopg.OperationalError,  # includes a pool timeout, a deadlock, a serialization failure
    psycopg.InterfaceError,
    OperationalError,  # the library's renames of the two above (and of SQLite's)
    InterfaceError,
    sqlite3.OperationalError,  # "database is locked"
)
RECORD_FAULTS = (ContractError, ValidationError)


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
