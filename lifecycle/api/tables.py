"""The API's own tables, and `prepare_tables`: every table the routes use, made at start-up.

No HTTP request runs DDL: the app's lifespan calls `prepare_tables` once, and each class's
create method takes the guarded DDL path (`Database.ddl()`), so processes starting together
on one PostgreSQL schema take turns.
"""

from __future__ import annotations

from uuid import UUID

from lifecycle.application import Accounts
from lifecycle.erasure import ErasureProcess
from lifecycle.storage import Database
from projections.registry import open_read_models


def prepare_tables(accounts: Accounts) -> None:
    """Create (when missing) the read models, the erasure tables and the API's own tables."""
    database = accounts.database
    open_read_models(database)
    ErasureProcess(accounts).create_tables()
    DeadLetterActions(database).create_table()
    PersonalDataReads(database).create_table()


class DeadLetterActions:
    """What ops did with each dead letter: Kafka cannot delete one record, so a discarded or
    re-driven record stays on its topic (until retention) and is hidden from the list."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.table = database.table("dead_letter_actions")

    def create_table(self) -> None:
        database = self.database
        with database.ddl() as cursor:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                "topic TEXT NOT NULL, partition INTEGER NOT NULL, record_offset BIGINT NOT NULL, "
                f"action TEXT NOT NULL, acted_at {database.timestamp_type} NOT NULL "
                f"DEFAULT {database.now}, PRIMARY KEY (topic, partition, record_offset))"
            )

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

    def create_table(self) -> None:
        database = self.database
        with database.ddl() as cursor:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                f"read_at {database.timestamp_type} NOT NULL DEFAULT {database.now}, "
                f"account_id {database.id_type} NOT NULL, role TEXT NOT NULL, "
                "request_id TEXT, events INTEGER NOT NULL)"
            )

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
