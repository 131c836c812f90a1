"""The scout service's eraser: scouts per account, gone on withdrawal, refused after it.

Tables in the service's own schema: `scouts` and `withdrawn_accounts` (an account id only,
which is not personal, kept so that a late scout for a withdrawn account is refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from consumers.handler import AccountWithdrawnError, Handler, HandlerResult, erase_on_withdrawal
from consumers.store import insert_rows
from lifecycle.logs import get_logger
from lifecycle.storage import Cursor, Database, lock_key, lock_keys
from schemas.contract import (
    Envelope,
    ScoutReceivedV1,
    TopicNames,
)

SERVICE = "scout"
SCOUT_COLUMNS = (
    ("account_id", "text"),
    ("scout_id", "text"),
    ("company_id", "text"),
    ("job_id", "text"),
    ("received_at", "timestamptz"),
)
ON_CONFLICT = "ON CONFLICT DO NOTHING"

log = get_logger(__name__)


def subscribed_topics(topics: TopicNames) -> list[str]:
    return [topics.lifecycle]


class ScoutHandler(Handler):
    personal_tables = ("scouts",)

    def __init__(self, database: Database, topics: TopicNames) -> None:
        self.database = database
        self.topics = topics

    def handle(self, envelope: Envelope, cursor: Cursor) -> HandlerResult:
        data = envelope.data
        if isinstance(data, ScoutReceivedV1):
            try:
                record_scout(self.database, cursor, data)
            except AccountWithdrawnError:
                log.warning("scout.refused", account_id=str(data.account_id), ce_id=envelope.id)
                return HandlerResult(outcome="refused")
            return HandlerResult(outcome="scout_recorded")
        erased = erase_on_withdrawal(
            envelope,
            lambda account_id: erase(self.database, cursor, account_id),
            self.topics,
            SERVICE,
        )
        return erased or HandlerResult(outcome="ignored")

    def handle_many(self, envelopes: Sequence[Envelope], cursor: Cursor) -> list[HandlerResult]:
        """Runs of scouts in three statements each; anything else in its place, one by one."""
        results: list[HandlerResult] = []
        run: list[Envelope] = []
        for envelope in [*envelopes, None]:
            if envelope is not None and isinstance(envelope.data, ScoutReceivedV1):
                run.append(envelope)
                continue
            if run:
                scouts = [e.data for e in run if isinstance(e.data, ScoutReceivedV1)]
                kept = record_scouts(self.database, cursor, scouts)
                for item, recorded in zip(run, kept, strict=True):
                    if not recorded:
                        log.warning("scout.refused", account_id=item.subject, ce_id=item.id)
                    results.append(
                        HandlerResult(outcome="scout_recorded" if recorded else "refused")
                    )
                run = []
            if envelope is not None:
                results.append(self.handle(envelope, cursor))
        return results


def record_scout(database: Database, cursor: Cursor, scout: ScoutReceivedV1) -> bool:
    """Keep one scout; refuses (AccountWithdrawnError) for a withdrawn account."""
    account = str(scout.account_id)
    lock_key(database, cursor, f"scout:{account}")
    if _is_withdrawn(database, cursor, account):
        raise AccountWithdrawnError()
    cursor.execute(
        f"INSERT INTO {database.table('scouts')} "
        "(account_id, scout_id, company_id, job_id, received_at) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT DO NOTHING",
        (account, scout.scout_id, scout.company_id, scout.job_id, _timestamp(database, scout)),
    )
    return cursor.rowcount == 1


def record_scouts(
    database: Database, cursor: Cursor, scouts: Sequence[ScoutReceivedV1]
) -> list[bool]:
    """`record_scout` for many: per scout, False when refused (its account is withdrawn)."""
    accounts = sorted({str(scout.account_id) for scout in scouts})
    lock_keys(database, cursor, [f"scout:{account}" for account in accounts])
    condition, params = database.any_of("account_id", accounts)
    withdrawn = {
        row[0]
        for row in cursor.execute(
            f"SELECT account_id FROM {database.table('withdrawn_accounts')} WHERE {condition}",
            params,
        ).fetchall()
    }
    kept = [str(scout.account_id) not in withdrawn for scout in scouts]
    rows = [
        (
            str(scout.account_id),
            scout.scout_id,
            scout.company_id,
            scout.job_id,
            _timestamp(database, scout),
        )
        for scout, keep in zip(scouts, kept, strict=True)
        if keep
    ]
    if rows:
        insert_rows(
            database, cursor, database.table("scouts"), SCOUT_COLUMNS, rows, suffix=ON_CONFLICT
        )
    return kept


def erase(database: Database, cursor: Cursor, account_id: UUID) -> int:
    """Refuse from now on, and delete what is held; returns the rows removed."""
    account = str(account_id)
    lock_key(database, cursor, f"scout:{account}")
    cursor.execute(
        f"INSERT INTO {database.table('withdrawn_accounts')} (account_id) VALUES (%s) "
        "ON CONFLICT DO NOTHING",
        (account,),
    )
    cursor.execute(f"DELETE FROM {database.table('scouts')} WHERE account_id = %s", (account,))
    return cursor.rowcount


def scouts_of(database: Database, account_id: UUID) -> list[str]:
    with database.transaction(commit=False) as cursor:
        rows = cursor.execute(
            f"SELECT scout_id FROM {database.table('scouts')} WHERE account_id = %s "
            "ORDER BY scout_id",
            (str(account_id),),
        ).fetchall()
    return [row[0] for row in rows]


def held_rows(database: Database, account_id: UUID) -> int:
    """Rows that still hold anything about the account beyond its withdrawn id."""
    return len(scouts_of(database, account_id))


def is_withdrawn(database: Database, account_id: UUID) -> bool:
    with database.transaction(commit=False) as cursor:
        return _is_withdrawn(database, cursor, str(account_id))


def _is_withdrawn(database: Database, cursor: Cursor, account: str) -> bool:
    row = cursor.execute(
        f"SELECT 1 FROM {database.table('withdrawn_accounts')} WHERE account_id = %s",
        (account,),
    ).fetchone()
    return row is not None


def _timestamp(database: Database, scout: ScoutReceivedV1) -> Any:
    return database.dialect.timestamp(scout.received_at)
