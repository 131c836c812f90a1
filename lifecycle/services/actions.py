"""Who acts on the services (`Actor`), and the tables that record what ops and auditors did:
what was done with dead letters, and every decrypted audit read.

Both tables are created by migrations (lifecycle.migrations); building these runs no DDL.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from lifecycle.storage import Database


@dataclass(frozen=True)
class Actor:
    """Who asked: a role (`ops`, `auditor`, ...) and, over HTTP, the request's id. Logged and
    recorded with what they did; never a name."""

    role: str
    request_id: str | None = None


class DeadLetterActions:
    """What ops did with each dead letter: Kafka cannot delete one record, so a discarded or
    re-driven record stays on its topic (until retention) and is hidden from the list."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.table = database.table("dead_letter_actions")

    def done(self, topic: str) -> set[tuple[int, int]]:
        with self.database.transaction(commit=False) as cursor:
            rows = cursor.execute(
                f"SELECT partition, record_offset FROM {self.table} WHERE topic = %s", (topic,)
            ).fetchall()
        return {(int(p), int(o)) for p, o in rows}

    def claim(self, topic: str, partition: int, offset: int, action: str) -> bool:
        """Record the action; False when this record was already handled."""
        with self.database.transaction() as cursor:
            cursor.execute(
                f"INSERT INTO {self.table} (topic, partition, record_offset, action) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (topic, partition, offset, action),
            )
            return cursor.rowcount > 0

    def release(self, topic: str, partition: int, offset: int) -> None:
        with self.database.transaction() as cursor:
            cursor.execute(
                f"DELETE FROM {self.table} WHERE topic = %s AND partition = %s "
                "AND record_offset = %s",
                (topic, partition, offset),
            )


class PersonalDataReads:
    """The durable record of every decrypted audit read (ids and counts only)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.table = database.table("personal_data_reads")

    def record(self, account_id: UUID, role: str, request_id: str | None, events: int) -> None:
        with self.database.transaction() as cursor:
            cursor.execute(
                f"INSERT INTO {self.table} (account_id, role, request_id, events) "
                "VALUES (%s, %s, %s, %s)",
                (self.database.id_param(account_id), role, request_id, events),
            )

    def of(self, account_id: UUID) -> list[tuple[str, str | None, int]]:
        with self.database.transaction(commit=False) as cursor:
            rows = cursor.execute(
                f"SELECT role, request_id, events FROM {self.table} WHERE account_id = %s "
                "ORDER BY read_at",
                (self.database.id_param(account_id),),
            ).fetchall()
        return [(str(role), request_id, int(events)) for role, request_id, events in rows]
