"""The one adapter over the application's SQL database, PostgreSQL or SQLite.

Everything the service keeps beside the event store (keys, relay position, read models)
goes through `Database`, so each piece of SQL is written once with `%s` placeholders.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal
from urllib.parse import unquote, urlsplit
from uuid import UUID

from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore

Dialect = Literal["postgres", "sqlite"]


class DatabaseUrlError(ValueError):
    """A database URL this service cannot use; the message says what was expected.

    A `ValueError`, so Settings validation reports it as a bad value of LIFECYCLE_DATABASE_URL.
    The message never repeats the URL, which may hold a password.
    """


def persistence_env(database_url: str, schema: str = "public") -> dict[str, str]:
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
            "POSTGRES_CONNECT_TIMEOUT": "5",
            "POSTGRES_POOL_SIZE": "10",
            "POSTGRES_MAX_OVERFLOW": "20",
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
        if isinstance(datastore, PostgresDatastore):
            self.dialect: Dialect = "postgres"
            self.schema: str | None = datastore.schema
            self.events_table = self.table(f"{application_name.lower()}_events")
        else:
            self.dialect = "sqlite"
            self.schema = None
            self.events_table = "stored_events"

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
    def open(cls, database_url: str, schema: str = "public", *, pool_size: int = 2) -> Database:
        """A datastore of its own, without an event store (a downstream service's tables)."""
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
                schema=schema,
            )
        else:
            datastore = SQLiteDatastore(env["SQLITE_DBNAME"], pool_size=pool_size)
        return cls(datastore, application_name="none")

    def close(self) -> None:
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
            if self.dialect == "postgres":
                cursor.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"ddl:{self.schema}",)
                )
            yield cursor

    def id_param(self, account_id: UUID) -> UUID | str:
        """Originator ids as each recorder stores them (SQLite keeps hex text)."""
        return account_id if self.dialect == "postgres" else account_id.hex

    def to_uuid(self, value: UUID | str) -> UUID:
        return value if isinstance(value, UUID) else UUID(value)

    @property
    def blob_type(self) -> str:
        return "bytea" if self.dialect == "postgres" else "BLOB"

    @property
    def id_type(self) -> str:
        return "uuid" if self.dialect == "postgres" else "TEXT"

    @property
    def timestamp_type(self) -> str:
        return "timestamptz" if self.dialect == "postgres" else "TEXT"

    @property
    def now(self) -> str:
        return "now()" if self.dialect == "postgres" else "CURRENT_TIMESTAMP"


class Cursor:
    """Runs `%s`-placeholder SQL in either dialect; rows come back as tuples."""

    def __init__(self, cursor: Any, dialect: Dialect) -> None:
        self._cursor = cursor
        self._dialect = dialect

    def execute(self, statement: str, params: tuple[Any, ...] | list[Any] = ()) -> Cursor:
        if self._dialect == "sqlite":
            statement = statement.replace("%s", "?")
        self._cursor.execute(statement, params)
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
    # The library's PostgreSQL cursors return dict rows; SQLite returns sqlite3.Row.
    if isinstance(row, dict):
        return tuple(row.values())
    return tuple(row)
