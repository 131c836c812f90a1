"""The one adapter over the application's SQL database, PostgreSQL or SQLite, and every lock.

Everything the service keeps beside the event store (keys, relay position, read models)
goes through `Database`, so each piece of SQL is written once with `%s` placeholders. What
differs between the backends is a `SqlDialect` (`dialects.py`), chosen once when a database
is opened: code above this package asks `database.dialect`, never which backend it is. Every
lock is here too: the active-process lock (the relay), the turn-taking of schema setup, and
the per-key transaction lock the consumers take; advisory locks on PostgreSQL, a file lock or
the database's write lock on SQLite.
"""

from __future__ import annotations

import fcntl
import os
import select
import threading
import weakref
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit
from uuid import UUID

import psycopg
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore
from psycopg_pool import ConnectionPool

from lifecycle.storage.cleanup import ErasureCleanup
from lifecycle.storage.dialects import (
    PostgresDialect,
    SqlDialect,
    SqliteDialect,
    dialect_of,
    read_timestamp,
)

__all__ = [
    "Cursor",
    "Database",
    "DatabaseUrlError",
    "PostgresDialect",
    "SqlDialect",
    "SqliteDialect",
    "lock_key",
    "lock_keys",
    "read_timestamp",
]


class DatabaseUrlError(ValueError):
    """A database URL this service cannot use; the message says what was expected.

    A `ValueError`, so Settings validation reports it as a bad value of LIFECYCLE_DATABASE_URL.
    The message never repeats the URL, which may hold a password.
    """


def persistence_env(
    database_url: str, schema: str = "public", connect_timeout_s: int = 5, pool_size: int = 10
) -> dict[str, str]:
    """Translate `postgresql://...` or `sqlite:///path` into the eventsourcing environment."""
    parts = urlsplit(database_url)
    if parts.scheme in ("postgresql", "postgres"):
        if not parts.hostname or not parts.path.strip("/"):
            raise DatabaseUrlError("expected postgresql://user:password@host:port/dbname")
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": unquote(parts.path.lstrip("/")),
            "POSTGRES_HOST": parts.hostname,
            "POSTGRES_PORT": str(parts.port or 5432),
            "POSTGRES_USER": unquote(parts.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(parts.password or ""),
            "POSTGRES_CONNECT_TIMEOUT": str(connect_timeout_s),
            "POSTGRES_POOL_SIZE": str(pool_size),
            "POSTGRES_MAX_OVERFLOW": "20",
            # Checked before use; `harden_pool` then makes one failed check replace them all.
            "POSTGRES_PRE_PING": "y",
            "POSTGRES_SCHEMA": schema,
        }
    if parts.scheme == "sqlite":
        path = database_url.removeprefix("sqlite:///")
        if not path:
            raise DatabaseUrlError("expected sqlite:///path/to/file.sqlite3")
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path}
    raise DatabaseUrlError("database URL must start with postgresql:// or sqlite:///")


class Database:
    """A transaction-scoped cursor on the application's own datastore, in either dialect."""

    def __init__(
        self, datastore: PostgresDatastore | SQLiteDatastore, application_name: str
    ) -> None:
        self.datastore = datastore
        self.dialect: SqlDialect = dialect_of(datastore)
        self.cleanup = ErasureCleanup(lambda tables: self.dialect.after_erasure(self, tables))
        if isinstance(datastore, PostgresDatastore):
            harden_pool(datastore.pool)
            self.schema: str | None = datastore.schema
            self.events_table = self.table(f"{application_name.lower()}_events")
        else:
            self.schema = None
            self.events_table = "stored_events"
            secure_delete(datastore)

    def table(self, name: str) -> str:
        """A table's name as SQL should say it: schema-qualified on PostgreSQL."""
        return f"{self.schema}.{name}" if self.schema else name

    @classmethod
    def of(cls, factory: InfrastructureFactory[Any], application_name: str) -> Database:
        datastore = getattr(factory, "datastore", None)
        if isinstance(datastore, PostgresDatastore | SQLiteDatastore):
            return cls(datastore, application_name)
        raise DatabaseUrlError("the service needs PostgreSQL or SQLite persistence")

    @classmethod
    def open(
        cls,
        database_url: str,
        schema: str = "public",
        *,
        pool_size: int = 2,
        application_name: str = "none",
    ) -> Database:
        """A datastore of its own: a downstream service's tables, or (naming the application)
        the event store's database without the application (migrations)."""
        env = persistence_env(database_url, schema)
        datastore: PostgresDatastore | SQLiteDatastore
        if env["PERSISTENCE_MODULE"] == "eventsourcing.postgres":
            datastore = PostgresDatastore(
                env["POSTGRES_DBNAME"],
                env["POSTGRES_HOST"],
                env["POSTGRES_PORT"],
                env["POSTGRES_USER"],
                env["POSTGRES_PASSWORD"],
                connect_timeout=float(env["POSTGRES_CONNECT_TIMEOUT"]),
                pool_size=pool_size,
                max_overflow=pool_size,
                pre_ping=True,
                schema=schema,
            )
        else:
            name = env["SQLITE_DBNAME"]
            if not name.startswith(("file:", ":memory:")):
                Path(name).parent.mkdir(parents=True, exist_ok=True)  # a new store's directory
            datastore = SQLiteDatastore(name, pool_size=pool_size)
        return cls(datastore, application_name=application_name)

    def close(self) -> None:
        self.cleanup.close()
        self.datastore.close()

    @contextmanager
    def transaction(self, *, commit: bool = True) -> Iterator[Cursor]:
        with self.datastore.transaction(commit=commit) as cursor:
            yield Cursor(cursor, self.dialect)

    @contextmanager
    def ddl(self) -> Iterator[Cursor]:
        """A transaction for CREATE ... IF NOT EXISTS, safe when processes start together.

        PostgreSQL: `IF NOT EXISTS` does not stop two sessions creating the same new table
        at once (one fails on the catalogue's unique index), so DDL on a schema takes turns.
        """
        with self.transaction() as cursor:
            self.dialect.ddl_turn(cursor, self.schema)
            yield cursor

    def after_erasure(self, tables: Iterable[str]) -> None:
        """Leave no copy of deleted rows where the engine lets us reach it: SQLite truncates
        its write-ahead log, PostgreSQL vacuums the named tables (see the dialects); what the
        engine cannot do yet is owed and retried (`storage.cleanup`)."""
        self.cleanup.after_erasure(tables)

    def id_param(self, account_id: UUID) -> UUID | str:
        """Originator ids as each recorder stores them (SQLite keeps hex text)."""
        return self.dialect.id_param(account_id)

    def to_uuid(self, value: UUID | str) -> UUID:
        return value if isinstance(value, UUID) else UUID(value)

    def any_of(self, column: str, values: Iterable[object]) -> tuple[str, list[object]]:
        """`column` equal to any of `values`: a condition and its parameters."""
        return self.dialect.any_of(column, values)

    def schema_exists(self) -> bool:
        """Whether this database's schema is there (PostgreSQL); a SQLite file, once open, is."""
        with self.transaction(commit=False) as cursor:
            return self.dialect.schema_exists(cursor, self.schema)

    def table_exists(self, bare_name: str) -> bool:
        """Whether the table exists in this database's schema (PostgreSQL) or file."""
        with self.transaction(commit=False) as cursor:
            return self.dialect.table_exists(cursor, self.schema, bare_name)

    def table_names(self) -> set[str]:
        """The tables of this database's schema (PostgreSQL) or file (SQLite)."""
        with self.transaction(commit=False) as cursor:
            return self.dialect.table_names(cursor, self.schema)

    @property
    def blob_type(self) -> str:
        return self.dialect.blob_type

    @property
    def id_type(self) -> str:
        return self.dialect.id_type

    @property
    def timestamp_type(self) -> str:
        return self.dialect.timestamp_type

    @property
    def now(self) -> str:
        return self.dialect.now


def secure_delete(datastore: SQLiteDatastore) -> None:
    """Every connection of this SQLite pool overwrites deleted content with zeros (`PRAGMA
    secure_delete`), so a deleted row (a data key, a contact) leaves no bytes in its page."""
    pool = datastore.pool
    if getattr(pool, "_secure_delete", False):
        return
    create = pool._create_connection

    def create_securely() -> Any:
        connection = create()
        connection._sqlite_conn.execute("PRAGMA secure_delete = ON")
        return connection

    pool._create_connection = create_securely  # type: ignore[method-assign]
    pool._secure_delete = True  # type: ignore[attr-defined]


# How long the pool goes on reconnecting in the background before it gives up and lets the
# next request start afresh: short, so a server back after an outage is used within a request
# rather than after the pool's exponential reconnect delay (1, 2, 4, 8 s ...) has run out.
POOL_RECONNECT_TIMEOUT_S = 2.0


def harden_pool(pool: ConnectionPool[Any]) -> None:
    """Make a connection pool recover from a cut or a server restart in one attempt.

    A connection is checked before it is handed out, without a round trip: an idle
    connection's socket has nothing to read, so one that does (the server's goodbye, or the
    end of the stream after a restart or a cut) gets the full check (`SELECT ''`). When a
    check fails the whole pool is drained: a cut or a restart kills every connection at
    once, so the next attempt gets a new connection instead of the next dead one. Connections
    in use are replaced when they come back. A connection that dies after the check fails
    its caller's statement: a read is retried, a write's outcome is found out (see
    `lifecycle.recorders`). Idempotent; the pool may already be open.
    """
    ref = weakref.ref(pool)  # the pool holds its check: no reference cycle

    def check_or_drain(conn: Any) -> None:
        try:
            if conn.closed or conn.broken or _readable(conn.pgconn.socket):
                ConnectionPool.check_connection(conn)
        except Exception:
            owner = ref()
            if owner is not None:
                owner.drain()
            raise

    pool._check = check_or_drain
    pool.reconnect_timeout = POOL_RECONNECT_TIMEOUT_S


def _readable(fd: int) -> bool:
    """Whether a socket has something to read now (an idle connection should not)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


class Cursor:
    """Runs `%s`-placeholder SQL in either dialect; rows come back as tuples."""

    def __init__(self, cursor: Any, dialect: SqlDialect) -> None:
        self._cursor = cursor
        self.dialect = dialect

    def execute(self, statement: str, params: tuple[Any, ...] | list[Any] = ()) -> Cursor:
        self._cursor.execute(self.dialect.sql(statement), params)
        return self

    def insert_rows(
        self,
        table: str,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[Sequence[object]],
        *,
        suffix: str = "",
    ) -> Cursor:
        """Many rows in one statement; `columns` are (name, PostgreSQL type) pairs. The
        statement's text does not grow with the batch on PostgreSQL (`SqlDialect.rows`)."""
        names = ", ".join(name for name, _ in columns)
        source, params = self.dialect.rows(columns, rows)
        return self.execute(f"INSERT INTO {table} ({names}) {source} {suffix}", params)

    @property
    def raw(self) -> Any:
        """The driver's cursor (psycopg's, or the library's SQLite wrapper)."""
        return self._cursor

    def plain_rows(self) -> Cursor:
        """Rows as the driver's own tuples from the next execute on: the library makes a dict
        of each PostgreSQL row, which costs a reader of the whole log a tenth of its CPU."""
        self.dialect.plain_rows(self._cursor)
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        row = self._cursor.fetchone()
        return None if row is None else _as_tuple(row)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [_as_tuple(row) for row in self._cursor.fetchall()]

    @property
    def rowcount(self) -> int:
        # The library's SQLiteCursor wraps sqlite3's cursor without passing rowcount on.
        raw = getattr(self._cursor, "sqlite_cursor", self._cursor)
        return int(raw.rowcount)


def _as_tuple(row: Any) -> tuple[Any, ...]:
    # The library's PostgreSQL cursors return dict rows (tuples after plain_rows()); SQLite
    # returns sqlite3.Row.
    if type(row) is tuple:
        return row
    if isinstance(row, dict):
        return tuple(row.values())
    return tuple(row)


# Locks: every lock the service and its consumers take, in either dialect.

LockKind = Literal["relay", "workers"]

# First half of the two-key advisory lock, one per kind ("LCRY": the relay, "LCWK": the
# in-process workers of `serve`); the second half names schema and holder. The values are
# kept as they were, so processes of an older release and this one still exclude each
# other during a rolling deploy.
_LOCK_CLASSES: dict[LockKind, int] = {"relay": 0x4C435259, "workers": 0x4C43574B}


class SingleActiveLock(Protocol):
    """Held by one process at a time; the others stand by and try again."""

    held: bool

    def try_acquire(self) -> bool: ...

    def alive(self) -> bool: ...

    def release(self) -> None: ...


def single_active_lock(database: Database, kind: LockKind, name: str) -> SingleActiveLock:
    """The lock that makes one `kind` process named `name` the active one for this database.

    PostgreSQL: a session advisory lock on a connection of its own. SQLite: an exclusive
    `flock` on a file beside the database (a process lock for an in-memory database).
    """
    datastore = database.datastore
    if isinstance(datastore, PostgresDatastore):
        key = zlib.crc32(f"{datastore.schema}:{name}".encode())
        return PostgresAdvisoryLock(
            datastore, _LOCK_CLASSES[kind], key - (1 << 32) * (key >> 31), f"lifecycle-{kind}"
        )
    pool = datastore.pool
    if pool.is_sqlite_memory_mode:
        return ProcessLock(f"{pool.db_name}:{kind}-{name}")
    return FileLock(f"{pool.db_name}.{kind}-{name}.lock")


class PostgresAdvisoryLock:
    """A session advisory lock on a connection of its own; it ends with that connection."""

    def __init__(
        self, datastore: PostgresDatastore, class_id: int, object_id: int, application_name: str
    ) -> None:
        configured = datastore.pool.kwargs
        kwargs: dict[str, Any] = dict(configured() if callable(configured) else configured or {})
        kwargs.pop("row_factory", None)
        self._connect_kwargs = kwargs
        self._application_name = application_name
        self._key = (class_id, object_id)
        self._conn: psycopg.Connection[Any] | None = None
        self.held = False

    def try_acquire(self) -> bool:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(
                **self._connect_kwargs,
                autocommit=True,
                application_name=self._application_name,
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            )
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s, %s)", self._key).fetchone()
        self.held = bool(row and row[0])
        return self.held

    def alive(self) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def release(self) -> None:
        conn, self._conn, self.held = self._conn, None, False
        if conn is not None and not conn.closed:
            conn.close()  # ends the session, and with it the lock


class FileLock:
    """An exclusive `flock` on a file beside the SQLite database."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self.held = False

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd, self.held = fd, True
        return True

    def alive(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd, self.held = self._fd, None, False
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


class ProcessLock:
    """For an in-memory SQLite database, which only this process can see anyway."""

    def __init__(self, key: str) -> None:
        with _process_locks_guard:
            self._lock = _process_locks.setdefault(key, threading.Lock())
        self.held = False

    def try_acquire(self) -> bool:
        self.held = self._lock.acquire(blocking=False)
        return self.held

    def alive(self) -> bool:
        return self.held

    def release(self) -> None:
        if self.held:
            self.held = False
            self._lock.release()


@contextmanager
def schema_setup_turn(database_url: str, schema: str) -> Iterator[None]:
    """Processes starting together (API, relay, erasure) create tables one at a time.

    The library's own CREATE ... IF NOT EXISTS and CREATE OR REPLACE FUNCTION fail when two
    sessions run them at once; a session-level advisory lock on PostgreSQL makes them take
    turns for as long as the block runs. SQLite needs none (one process owns the file).
    """
    if urlsplit(database_url).scheme == "sqlite":
        yield
        return
    with psycopg.connect(database_url, connect_timeout=5, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_advisory_lock(hashtextextended(%s, 0))", (f"lifecycle-setup:{schema}",)
        )
        yield


def lock_key(database: Database, cursor: Cursor, key: str) -> None:
    """Serialise transactions about one key (e.g. one account) until this one ends.

    Call it before the transaction reads anything. PostgreSQL: a transaction-scoped advisory
    lock on the key. SQLite: a no-op write, which takes the database's one write lock now
    rather than failing later to upgrade a read snapshot another writer made stale.
    """
    database.dialect.lock_key(cursor, key)


def lock_keys(database: Database, cursor: Cursor, keys: Iterable[str]) -> None:
    """`lock_key` for many keys in one statement (a batch), taken in one order by everyone."""
    database.dialect.lock_keys(cursor, keys)
