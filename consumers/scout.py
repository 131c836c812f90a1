"""The scout service: scouts per account, gone on withdrawal, refused after it, exported on
request (`ScoutSectionV1`).

Tables in the service's own schema: `scouts` and `withdrawn_accounts` (the kit's tombstones:
an account id only, which is not personal, kept so that a late scout for a withdrawn account
is refused). Erasure, confirmation and tombstones are the kit's (`consumers.member_data`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from consumers.handler import HandlerResult
from consumers.member_data import OTHER, MemberDataHandler
from consumers.store import utc
from lifecycle.logs import get_logger
from lifecycle.storage import Cursor, Database
from schemas.contract import (
    Envelope,
    ScoutReceivedV1,
    TopicNames,
)
from schemas.data_export import HeldScoutV1, ScoutSectionV1

SERVICE = "scout"
SCOUT_COLUMNS = (
    ("account_id", "text"),
    ("scout_id", "text"),
    ("company_id", "text"),
    ("job_id", "text"),
    ("received_at", "timestamptz"),
)
ON_CONFLICT = "ON CONFLICT DO NOTHING"
SCOUT = "scout"

log = get_logger(__name__)


def subscribed_topics(topics: TopicNames) -> list[str]:
    return list(topics.inputs_of(SERVICE))


class ScoutHandler(MemberDataHandler):
    service = SERVICE
    personal_tables = ("scouts",)
    repeatable_kinds = frozenset({SCOUT})

    def kind_of(self, envelope: Envelope) -> str:
        return SCOUT if isinstance(envelope.data, ScoutReceivedV1) else OTHER

    def handle_records(
        self, cursor: Cursor, kind: str, envelopes: Sequence[Envelope]
    ) -> list[HandlerResult]:
        """A run of scouts in two statements; one for a withdrawn account is refused."""
        if kind != SCOUT:
            return super().handle_records(cursor, kind, envelopes)
        scouts = [e.data for e in envelopes if isinstance(e.data, ScoutReceivedV1)]
        withdrawn = self.withdrawn_among(cursor, [scout.account_id for scout in scouts])
        kept = [scout for scout in scouts if scout.account_id not in withdrawn]
        if kept:
            db = self.database
            rows = [
                (str(s.account_id), s.scout_id, s.company_id, s.job_id, _timestamp(db, s))
                for s in kept
            ]
            cursor.insert_rows(db.table("scouts"), SCOUT_COLUMNS, rows, suffix=ON_CONFLICT)
        results = []
        for envelope, scout in zip(envelopes, scouts, strict=True):
            if scout.account_id in withdrawn:
                log.warning("scout.refused", account_id=envelope.subject, ce_id=envelope.id)
                results.append(HandlerResult(outcome="refused"))
            else:
                results.append(HandlerResult(outcome="scout_recorded"))
        return results

    def export(self, cursor: Cursor, account_id: UUID) -> ScoutSectionV1:
        """Every scout held for the account, oldest first."""
        rows = cursor.execute(
            "SELECT scout_id, company_id, job_id, received_at "
            f"FROM {self.database.table('scouts')} WHERE account_id = %s "
            "ORDER BY received_at, scout_id",
            (str(account_id),),
        ).fetchall()
        return ScoutSectionV1(
            scouts=[
                HeldScoutV1(
                    scout_id=scout_id, company_id=company, job_id=job, received_at=utc(received)
                )
                for scout_id, company, job, received in rows
            ]
        )


# Queries


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
        row = cursor.execute(
            f"SELECT 1 FROM {database.table('withdrawn_accounts')} WHERE account_id = %s",
            (str(account_id),),
        ).fetchone()
    return row is not None


def _timestamp(database: Database, scout: ScoutReceivedV1) -> Any:
    return database.dialect.timestamp(scout.received_at)
