"""A consumer's own datastore: de-duplication marks and an outbox beside the service's tables.

The service's effect, the `processed_events` mark of the record (its (source, type, id) key,
`schemas.contract.dedupe_key`, in the column `ce_id`) and any outgoing
records (confirmations) are written in one transaction, so they commit or vanish together.
Outgoing records are published after the commit and deleted once the broker acknowledged them;
rows a crash left behind are published on the next start (same `ce_id`, so receivers dedupe).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from lifecycle.storage import Cursor, Database, read_timestamp
from schemas.contract import Record

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class StoreConfigError(ValueError):
    """A schema name or table prefix that cannot be used as an SQL identifier."""


@dataclass(frozen=True)
class Outgoing:
    """A record to publish once the transaction that produced it has committed."""

    topic: str
    record: Record


@dataclass(frozen=True)
class PendingOutgoing:
    row_id: int
    topic: str
    record: Record


def open_database(database_url: str, schema: str) -> Database:
    """A service's store: its own PostgreSQL schema, or its own SQLite file.

    For SQLite, `database_url` names the file itself (`sqlite:///data/scout.sqlite3`).
    """
    check_identifier(schema)
    return Database.open(database_url, schema)


def check_identifier(name: str) -> str:
    if not IDENTIFIER.match(name):
        raise StoreConfigError(f"not a plain lower-case SQL identifier: {name!r}")
    return name


def utc(value: datetime | str) -> datetime:
    """A timestamp column's value as an aware UTC time (`lifecycle.storage.read_timestamp`),
    for a column that is never NULL."""
    moment = read_timestamp(value)
    if moment is None:
        raise ValueError("a NOT NULL timestamp column held NULL")
    return moment


def count_rows(database: Database, tables: Iterable[str], account_id: UUID) -> int:
    """How many rows of the given tables still name the account."""
    with database.transaction(commit=False) as cursor:
        total = 0
        for table in tables:
            row = cursor.execute(
                f"SELECT count(*) FROM {database.table(table)} WHERE account_id = %s",
                (str(account_id),),
            ).fetchone()
            total += int(row[0]) if row else 0
    return total


class ConsumerStore:
    """`processed_events` and `outbox` tables of one consumer, in the service's database
    (made by the kit's migrations, consumers.migrations)."""

    def __init__(self, database: Database, *, table_prefix: str = "") -> None:
        if table_prefix:
            check_identifier(table_prefix)
        self.database = database
        self.processed_table = database.table(f"{table_prefix}processed_events")
        self.outbox_table = database.table(f"{table_prefix}outbox")

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self.database.transaction() as cursor:
            yield cursor

    def is_processed(self, ce_id: str) -> bool:
        return bool(self.processed_among([ce_id]))

    def processed_among(self, ce_ids: Sequence[str]) -> set[str]:
        """Which of these `ce_id`s are marked already (one query for a whole batch)."""
        if not ce_ids:
            return set()
        with self.database.transaction(commit=False) as cursor:
            condition, params = self.database.any_of("ce_id", ce_ids)
            rows = cursor.execute(
                f"SELECT ce_id FROM {self.processed_table} WHERE {condition}", params
            ).fetchall()
        return {row[0] for row in rows}

    def mark_processed(self, cursor: Cursor, ce_id: str) -> bool:
        """Insert the mark first: False when it was there already (a duplicate)."""
        return bool(self.mark_all_processed(cursor, [ce_id]))

    def mark_all_processed(self, cursor: Cursor, ce_ids: Sequence[str]) -> set[str]:
        """Insert the marks first, in one statement: returns those that were new.

        Written first, a mark also takes the write lock (SQLite) or the key's index lock
        (PostgreSQL), so two deliveries of one record cannot both apply their effect.
        """
        unique = sorted(set(ce_ids))  # one lock order for every member
        if not unique:
            return set()
        rows = cursor.insert_rows(
            self.processed_table,
            [("ce_id", "text")],
            [(ce_id,) for ce_id in unique],
            suffix="ON CONFLICT DO NOTHING RETURNING ce_id",
        ).fetchall()
        return {row[0] for row in rows}

    def add_outgoing(self, cursor: Cursor, outgoing: Sequence[Outgoing]) -> list[int]:
        """Keep `outgoing` in the outbox, in this transaction; the rows' ids, to delete them
        once published (the caller holds the records: no read back)."""
        if not outgoing:
            return []
        blob = self.database.blob_type
        rows = cursor.insert_rows(
            self.outbox_table,
            [("topic", "text"), ("record_key", blob), ("headers", "text"), ("record_value", blob)],
            [
                (
                    item.topic,
                    item.record.key,
                    _encode_headers(item.record.headers),
                    item.record.value,
                )
                for item in outgoing
            ],
            suffix="RETURNING id",
        ).fetchall()
        return [int(row_id) for (row_id,) in rows]

    def pending_outgoing(self, limit: int = 100) -> list[PendingOutgoing]:
        with self.database.transaction(commit=False) as cursor:
            rows = cursor.execute(
                f"SELECT id, topic, record_key, headers, record_value FROM {self.outbox_table} "
                "ORDER BY id LIMIT %s",
                (limit,),
            ).fetchall()
        return [
            PendingOutgoing(
                int(row_id),
                topic,
                Record(
                    bytes(key), _decode_headers(headers), None if value is None else bytes(value)
                ),
            )
            for row_id, topic, key, headers, value in rows
        ]

    def delete_outgoing(self, row_ids: Sequence[int]) -> None:
        if not row_ids:
            return
        where, params = self.database.any_of("id", row_ids)
        with self.database.transaction() as cursor:
            cursor.execute(f"DELETE FROM {self.outbox_table} WHERE {where}", params)

    def forget_processed(self, before: datetime, limit: int = 1000) -> int:
        """Delete up to `limit` marks made before `before` (the oldest first); how many.

        A mark only has to outlive every redelivery of its record: past the source topics'
        retention (and the group's committed offset) the record cannot come again."""
        table = self.processed_table
        cutoff = self.database.dialect.as_now_writes(before)  # the marks' default is `now`
        with self.database.transaction() as cursor:
            cursor.execute(
                f"DELETE FROM {table} WHERE ce_id IN (SELECT ce_id FROM {table} "
                "WHERE processed_at < %s ORDER BY processed_at LIMIT %s)",
                (cutoff, limit),
            )
            return cursor.rowcount

    def processed_count(self) -> int:
        with self.database.transaction(commit=False) as cursor:
            row = cursor.execute(f"SELECT count(*) FROM {self.processed_table}").fetchone()
        return int(row[0]) if row else 0


def _encode_headers(headers: Sequence[tuple[str, bytes]]) -> str:
    # Header values are ids, types and times (see schemas.contract): UTF-8 text in practice,
    # but stored as hex so any bytes survive the round trip.
    return json.dumps([[name, value.hex()] for name, value in headers])


def _decode_headers(text: str) -> list[tuple[str, bytes]]:
    return [(name, bytes.fromhex(value)) for name, value in json.loads(text)]
