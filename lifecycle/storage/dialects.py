"""Every difference between PostgreSQL and SQLite, one class per backend, chosen once.

`Database` picks its dialect when it is opened (as the library picks its recorders by
persistence module); code above the database layer asks the dialect for what differs (a
type, a statement's shape, a lock, a timestamp's stored form) and never names a backend.
Statements are written once with `%s` placeholders; `sql()` adapts them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, TypeVar
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore
from psycopg.rows import tuple_row

T = TypeVar("T")


class Executes(Protocol):
    """What the dialects need of a cursor (`storage.Cursor`)."""

    def execute(self, statement: str, params: tuple[Any, ...] | list[Any] = ()) -> Any: ...

    @property
    def raw(self) -> Any: ...


def read_timestamp(value: datetime | str | None) -> datetime | None:
    """A timestamp column's value as an aware UTC datetime: PostgreSQL hands back datetimes,
    SQLite the ISO text it keeps (naive where the database wrote it, which is UTC)."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class SqlDialect:
    """What differs between the backends; `PostgresDialect` and `SqliteDialect` say how."""

    name: ClassVar[str]
    # Several transactions may write at once (PostgreSQL); SQLite has one writer at a time,
    # so work that batches writers or runs them side by side does them one by one there.
    concurrent_writers: ClassVar[bool]
    # Another process can open the same database (a server): work may be split over forked
    # processes (the audit replay). A SQLite database may be one process's own, in memory.
    shared_by_processes: ClassVar[bool]
    blob_type: ClassVar[str]
    id_type: ClassVar[str]
    timestamp_type: ClassVar[str]
    serial_primary_key: ClassVar[str]
    now: ClassVar[str]
    # Appended to a SELECT that must lock the rows it reads until the transaction ends.
    for_update: ClassVar[str]
    # The library's events table: the column that holds a notification's position.
    events_position: ClassVar[str]

    def pick(self, *, postgres: T, sqlite: T) -> T:
        """One of two things written for each backend (a migration's own DDL)."""
        raise NotImplementedError

    def sql(self, statement: str) -> str:
        return statement

    def id_param(self, account_id: UUID) -> UUID | str:
        """Originator ids as the recorders store them."""
        raise NotImplementedError

    def timestamp(self, moment: datetime) -> datetime | str:
        """A datetime as a timestamp column keeps it (read back with `read_timestamp`)."""
        raise NotImplementedError

    def as_now_writes(self, moment: datetime) -> datetime | str:
        """A datetime in the form `now` writes, to compare with a column it defaulted."""
        raise NotImplementedError

    def any_of(self, column: str, values: Iterable[object]) -> tuple[str, list[object]]:
        """`column` equal to any of `values`: a condition and its parameters."""
        raise NotImplementedError

    def rows(
        self, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[object]]
    ) -> tuple[str, list[object]]:
        """Rows as a SELECT whose columns are named `columns` ((name, PostgreSQL type) pairs),
        for one statement: `INSERT INTO t (...) <it> [ON CONFLICT ...]` or
        `UPDATE t SET ... FROM (<it>) AS v WHERE ...` (a statement that starts with WITH would
        lose its row count on SQLite)."""
        raise NotImplementedError

    def delete_accounts(
        self,
        cursor: Executes,
        tables: Sequence[str],
        where: str,
        params: list[object],
        counted: int,
    ) -> list[Any]:
        """Delete the rows `where` (with `params`) selects from each of `tables`, in one
        statement where the engine can; the `account_id` of every row deleted from the first
        `counted` tables. Here one statement a table."""
        found: list[Any] = []
        for index, table in enumerate(tables):
            returning = " RETURNING account_id" if index < counted else ""
            result = cursor.execute(f"DELETE FROM {table} WHERE {where}{returning}", params)
            if returning:
                found += [row[0] for row in result.fetchall()]
        return found

    # Locks

    def ddl_turn(self, cursor: Executes, schema: str | None) -> None:
        """Make DDL on the schema take turns with other sessions' until the transaction ends."""

    def lock_key(self, cursor: Executes, key: str) -> None:
        """Serialise transactions about one key until this one ends (call before reading)."""
        self.lock_keys(cursor, [key])

    def lock_keys(self, cursor: Executes, keys: Iterable[str]) -> None:
        raise NotImplementedError

    def lock_table(self, cursor: Executes, table: str) -> None:
        """Keep every other session off the table until the transaction ends."""

    def lock_timeout(self, cursor: Executes, timeout: str) -> None:
        """Give up waiting for a lock after `timeout` (PostgreSQL interval text)."""

    def lock_table_statements(self) -> list[str]:
        """DDL of what `lock_key` needs in a store (migrations run it)."""
        return []

    # Schemas and tables

    def create_schema(self, cursor: Executes, schema: str | None) -> None:
        """The schema the tables live in, when the backend has schemas."""

    def schema_exists(self, cursor: Executes, schema: str | None) -> bool:
        """Whether the schema is there; a backend without schemas has the file it opened."""
        return True

    def table_exists(self, cursor: Executes, schema: str | None, name: str) -> bool:
        raise NotImplementedError

    def table_names(self, cursor: Executes, schema: str | None) -> set[str]:
        raise NotImplementedError

    def rename_indexes(
        self, cursor: Executes, schema: str | None, tables: Sequence[str], suffix: str
    ) -> None:
        """The indexes of `tables` whose names hold `suffix` get their names without it."""
        raise NotImplementedError

    def create_library_tables(self, cursor: Executes, recorder: Any) -> None:
        """A library recorder's own CREATE statements."""
        raise NotImplementedError

    @contextmanager
    def pipelined(self, raw: Any) -> Iterator[None]:
        """Statements sent without waiting for each result (one round trip for a batch)."""
        yield

    def plain_rows(self, raw: Any) -> None:
        """The driver's own tuples as rows from the next execute on, where the library asks
        for others (its PostgreSQL cursors make a dict of each row)."""

    def after_erasure(self, database: Any, tables: Sequence[str]) -> bool:
        """Leave no copy of deleted rows where the engine lets us reach it (`database`: the
        `storage.Database` this dialect is of); False when it could not yet (owed, retried:
        `storage.cleanup`)."""
        raise NotImplementedError


class PostgresDialect(SqlDialect):
    name = "postgres"
    concurrent_writers = True
    shared_by_processes = True
    blob_type = "bytea"
    id_type = "uuid"
    timestamp_type = "timestamptz"
    serial_primary_key = "BIGSERIAL PRIMARY KEY"
    now = "now()"
    for_update = " FOR UPDATE"
    events_position = "notification_id"

    def __init__(self) -> None:
        self._vacuumed_at = 0.0

    def pick(self, *, postgres: T, sqlite: T) -> T:
        return postgres

    def id_param(self, account_id: UUID) -> UUID | str:
        return account_id

    def timestamp(self, moment: datetime) -> datetime | str:
        return moment

    def as_now_writes(self, moment: datetime) -> datetime | str:
        return moment

    def any_of(self, column: str, values: Iterable[object]) -> tuple[str, list[object]]:
        # One array: the statement's text (parsed and planned once) is the same for any batch.
        return f"{column} = ANY(%s)", [list(values)]

    def rows(
        self, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[object]]
    ) -> tuple[str, list[object]]:
        # One array per column: the statement's text does not grow with the batch.
        arrays = ", ".join(f"%s::{kind}[]" for _, kind in columns)
        names = ", ".join(name for name, _ in columns)
        return f"SELECT * FROM unnest({arrays}) AS v ({names})", [
            [row[i] for row in rows] for i in range(len(columns))
        ]

    def delete_accounts(
        self,
        cursor: Executes,
        tables: Sequence[str],
        where: str,
        params: list[object],
        counted: int,
    ) -> list[Any]:
        # Data-modifying WITH: every DELETE runs, once, in one round trip.
        deletes = ", ".join(
            f"d{i} AS (DELETE FROM {table} WHERE {where} RETURNING account_id)"
            for i, table in enumerate(tables)
        )
        counted_rows = " UNION ALL ".join(f"SELECT account_id FROM d{i}" for i in range(counted))
        query = counted_rows or "SELECT NULL AS account_id WHERE false"
        result = cursor.execute(f"WITH {deletes} {query}", params * len(tables))
        return [row[0] for row in result.fetchall()]

    def ddl_turn(self, cursor: Executes, schema: str | None) -> None:
        # `IF NOT EXISTS` does not stop two sessions creating the same new table at once
        # (one fails on the catalogue's unique index).
        cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"ddl:{schema}",))

    def lock_key(self, cursor: Executes, key: str) -> None:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))

    def lock_keys(self, cursor: Executes, keys: Iterable[str]) -> None:
        ordered = sorted(set(keys))  # one order for everyone: no deadlock between batches
        if ordered:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) "
                "FROM (SELECT k FROM unnest(%s::text[]) AS k ORDER BY k) AS keys",
                (ordered,),
            )

    def lock_table(self, cursor: Executes, table: str) -> None:
        cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

    def lock_timeout(self, cursor: Executes, timeout: str) -> None:
        cursor.execute(f"SET LOCAL lock_timeout = '{timeout}'")

    def create_schema(self, cursor: Executes, schema: str | None) -> None:
        cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")

    def schema_exists(self, cursor: Executes, schema: str | None) -> bool:
        row = cursor.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,)
        ).fetchone()
        return row is not None

    def table_exists(self, cursor: Executes, schema: str | None, name: str) -> bool:
        qualified = f"{schema}.{name}" if schema else name
        row = cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (qualified,)).fetchone()
        return bool(row and row[0])

    def table_names(self, cursor: Executes, schema: str | None) -> set[str]:
        rows = cursor.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        ).fetchall()
        return {str(row[0]) for row in rows}

    def rename_indexes(
        self, cursor: Executes, schema: str | None, tables: Sequence[str], suffix: str
    ) -> None:
        marks = ", ".join(["%s"] * len(tables))
        rows = cursor.execute(
            f"SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename IN ({marks})",
            (schema, *tables),
        ).fetchall()
        for (name,) in rows:
            if suffix in name:
                qualified = f"{schema}.{name}" if schema else name
                cursor.execute(f"ALTER INDEX {qualified} RENAME TO {name.replace(suffix, '')}")

    def create_library_tables(self, cursor: Executes, recorder: Any) -> None:
        for statement in recorder.sql_create_statements:
            cursor.raw.execute(statement, prepare=False)

    @contextmanager
    def pipelined(self, raw: Any) -> Iterator[None]:
        with raw.connection.pipeline():
            yield

    def plain_rows(self, raw: Any) -> None:
        raw.row_factory = tuple_row

    def after_erasure(self, database: Any, tables: Sequence[str]) -> bool:
        """VACUUM the named tables (at most once a second per process: sooner is owed), so
        their dead tuples leave the visibility of every reader and their space is reused; what
        stays in WAL segments, archives and backups is bounded by key destruction (see the
        README)."""
        now = time.monotonic()
        if not tables:
            return True
        if now - self._vacuumed_at < VACUUM_INTERVAL_S:
            return False
        self._vacuumed_at = now
        assert isinstance(database.datastore, PostgresDatastore)
        with database.datastore.get_connection() as conn:
            autocommit = conn.autocommit
            conn.autocommit = True  # VACUUM cannot run inside a transaction
            try:
                for name in tables:
                    conn.execute(f"VACUUM {database.table(name)}")
            finally:
                conn.autocommit = autocommit
        return True


class SqliteDialect(SqlDialect):
    name = "sqlite"
    concurrent_writers = False
    shared_by_processes = False
    blob_type = "BLOB"
    id_type = "TEXT"
    timestamp_type = "TEXT"
    serial_primary_key = "INTEGER PRIMARY KEY AUTOINCREMENT"
    now = "CURRENT_TIMESTAMP"
    for_update = ""  # one writer at a time serialises the transactions anyway
    events_position = "rowid"

    def pick(self, *, postgres: T, sqlite: T) -> T:
        return sqlite

    def sql(self, statement: str) -> str:
        return statement.replace("%s", "?")

    def id_param(self, account_id: UUID) -> UUID | str:
        return account_id.hex  # the library's SQLite recorder keeps hex text

    def timestamp(self, moment: datetime) -> datetime | str:
        return moment.astimezone(UTC).isoformat()

    def as_now_writes(self, moment: datetime) -> datetime | str:
        # CURRENT_TIMESTAMP's text, UTC to the second: compared as text, so the same layout.
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")

    def any_of(self, column: str, values: Iterable[object]) -> tuple[str, list[object]]:
        listed = list(values)
        return f"{column} IN ({', '.join(['%s'] * len(listed))})", listed

    def rows(
        self, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[object]]
    ) -> tuple[str, list[object]]:
        row = "(" + ", ".join(["%s"] * len(columns)) + ")"
        names = ", ".join(f"column{i} AS {name}" for i, (name, _) in enumerate(columns, 1))
        # WHERE true: without it SQLite reads a following ON CONFLICT as a join's ON.
        return (
            f"SELECT {names} FROM (VALUES {', '.join([row] * len(rows))}) WHERE true",
            [value for r in rows for value in r],
        )

    def lock_keys(self, cursor: Executes, keys: Iterable[str]) -> None:
        # A no-op write takes the database's one write lock now, rather than failing later to
        # upgrade a read snapshot another writer made stale.
        cursor.execute("UPDATE key_locks SET id = id WHERE id = 0")

    def lock_table_statements(self) -> list[str]:
        return ["CREATE TABLE IF NOT EXISTS key_locks (id INTEGER PRIMARY KEY)"]

    def table_exists(self, cursor: Executes, schema: str | None, name: str) -> bool:
        row = cursor.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = %s", (name,)
        ).fetchone()
        return bool(row and row[0])

    def table_names(self, cursor: Executes, schema: str | None) -> set[str]:
        rows = cursor.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%%'"
        ).fetchall()
        return {str(row[0]) for row in rows}

    def rename_indexes(
        self, cursor: Executes, schema: str | None, tables: Sequence[str], suffix: str
    ) -> None:
        # SQLite cannot rename an index: it is made again under the live name.
        marks = ", ".join(["%s"] * len(tables))
        rows = cursor.execute(
            "SELECT name, sql FROM sqlite_master "
            f"WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN ({marks})",
            tuple(tables),
        ).fetchall()
        for name, sql in rows:
            if suffix in name:
                cursor.execute(f"DROP INDEX {name}")
                cursor.execute(str(sql).replace(suffix, ""))

    def create_library_tables(self, cursor: Executes, recorder: Any) -> None:
        for text in recorder.create_table_statements:
            cursor.execute(text)

    def after_erasure(self, database: Any, tables: Sequence[str]) -> bool:
        """With `secure_delete` deleted content is zeroed in the pages: checkpoint the
        write-ahead log into the database and truncate it to nothing, so no older page image
        with the deleted row survives in the WAL file."""
        # TRUNCATE holds the writer lock while it waits for readers to leave the WAL, so it
        # waits briefly (writers are blocked meanwhile); busy means a reader stayed: owed.
        with database.transaction(commit=False) as cursor:
            (timeout,) = cursor.execute("PRAGMA busy_timeout").fetchone() or (5000,)
            cursor.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
            try:
                row = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                cursor.execute(f"PRAGMA busy_timeout = {int(timeout)}")
        return row is None or not row[0]


VACUUM_INTERVAL_S = 1.0
CHECKPOINT_WAIT_MS = 200


def dialect_of(datastore: PostgresDatastore | SQLiteDatastore) -> SqlDialect:
    """The dialect of a datastore, chosen once when a `Database` is opened."""
    if isinstance(datastore, PostgresDatastore):
        return PostgresDialect()
    return SqliteDialect()


__all__ = [
    "PostgresDialect",
    "SqlDialect",
    "SqliteDialect",
    "dialect_of",
    "read_timestamp",
]
