"""Versioned schema migrations: ordered, recorded in the database, run by `lifecycle migrate`.

A database holds one or more *components*, each an ordered list of migrations with its own
version: the service's own tables (`lifecycle`), its read models (`read-models`), the consumer
kit's marks and outbox (`consumer-kit`, with a table prefix where it shares a schema), and each
reference service's tables. `schema_migrations` records every migration applied: component,
version, name, and the oldest code version that still works with the database once it ran.

Expand, then contract: a migration that only adds (a table, a nullable column or one with a
default, an index, a trigger beside the old one) leaves that number where it was, so the
previous release keeps running while the new one rolls out. A migration that removes or
changes what an older release used is marked `contracts=True`: it raises the number to its
own version, and processes of older code then refuse to start against it.

Processes never run DDL; at start each checks its components (`check`) and refuses with one
line naming `lifecycle migrate` when the database is older than it needs, or newer than it
understands. Each migration runs in a transaction of its own, in turn with every other DDL on
the schema (the advisory lock `Database.ddl()` takes, which the previous release's start-up
takes too), with a short lock timeout: a migration that would wait on a writer's lock is rolled
back whole and run again after a backoff instead of stalling the writers queued behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import psycopg.errors

from lifecycle.backoff import Backoff
from lifecycle.storage import Cursor, Database

MIGRATIONS_TABLE = "schema_migrations"
MIGRATE_COMMAND = "lifecycle migrate"

# A migration that loses a lock race is rolled back whole and may simply run again.
LOCK_RACES = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.SerializationFailure,
)
ATTEMPTS = 5
# Between attempts: 0.1, 0.2, 0.4, 0.8 s (as the loop waited before it used the one policy).
LOCK_RACE_BACKOFF = Backoff(initial_s=0.1, max_s=0.8)
# How long one migration statement may wait for a lock a writer holds (PostgreSQL).
LOCK_TIMEOUT = "5s"


@dataclass(frozen=True)
class Migration:
    """One step of a component. `apply` runs its DDL on the cursor it is given (inside the
    migration's transaction); it must never change once released: a fix is a new migration."""

    version: int
    name: str
    apply: Callable[[Cursor, Database], None]
    contracts: bool = False


@dataclass(frozen=True)
class Component:
    """An ordered list of migrations for one owner of tables in a database."""

    name: str
    migrations: tuple[Migration, ...]

    def __post_init__(self) -> None:
        versions = [m.version for m in self.migrations]
        if versions != list(range(1, len(versions) + 1)):
            raise ValueError(f"{self.name}: migrations must be numbered 1, 2, ... in order")

    @property
    def latest(self) -> int:
        return len(self.migrations)


@dataclass(frozen=True)
class Applied:
    component: str
    version: int
    name: str


@dataclass(frozen=True)
class State:
    """What a database records for one component."""

    version: int  # the highest migration applied (0: none)
    needs_code: int  # the oldest code version that still works with it


class SchemaVersionError(Exception):
    """The database's schema is not one this code works with; the message is one line that
    names the command to run. A plain exception: infrastructure raises no core error."""


def migrate(
    database: Database,
    components: Sequence[Component],
    on_applied: Callable[[Applied], None] | None = None,
) -> list[Applied]:
    """Apply every migration a component lacks, in order; returns what was applied (nothing
    when the database is up to date). Safe to run from several processes at once."""
    applied: list[Applied] = []
    retry_lock_races(lambda: _create_record_table(database))
    for component in components:
        for migration in component.migrations:
            done = retry_lock_races(partial(_apply, database, component, migration))
            if done is not None:
                applied.append(done)
                if on_applied is not None:
                    on_applied(done)
    return applied


def states(database: Database) -> dict[str, State]:
    """Every component's recorded state (empty before the first `migrate`)."""
    with database.transaction(commit=False) as cursor:
        if not _record_table_exists(database, cursor):
            return {}
        rows = cursor.execute(
            f"SELECT component, max(version) AS version, max(needs_code) AS needs FROM "
            f"{database.table(MIGRATIONS_TABLE)} GROUP BY component"
        ).fetchall()
    return {str(name): State(int(version), int(needs)) for name, version, needs in rows}


def check(database: Database, components: Sequence[Component], where: str = "database") -> None:
    """Refuse (SchemaVersionError, one line) unless each component's recorded state is one
    this code works with: at least its latest version, and needing no newer code."""
    found = states(database)
    for component in components:
        state = found.get(component.name, State(0, 0))
        if state.version < component.latest:
            raise SchemaVersionError(
                f"{where} schema {component.name} is at version {state.version}, this release "
                f"needs {component.latest}: run `{MIGRATE_COMMAND}` first"
            )
        if state.needs_code > component.latest:
            raise SchemaVersionError(
                f"{where} schema {component.name} is at version {state.version} and needs "
                f"code of version {state.needs_code} or later; this release understands up to "
                f"{component.latest}: deploy the newer release (`{MIGRATE_COMMAND}` "
                "never downgrades)"
            )


# Running one migration


def _create_record_table(database: Database) -> None:
    with database.ddl() as cursor:
        _lock_timeout(database, cursor)
        database.dialect.create_schema(cursor, database.schema)
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {database.table(MIGRATIONS_TABLE)} ("
            "component TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL, "
            "needs_code INTEGER NOT NULL, "
            f"applied_at {database.timestamp_type} NOT NULL DEFAULT {database.now}, "
            "PRIMARY KEY (component, version))"
        )


def _apply(database: Database, component: Component, migration: Migration) -> Applied | None:
    table = database.table(MIGRATIONS_TABLE)
    with database.ddl() as cursor:
        _lock_timeout(database, cursor)
        row = cursor.execute(
            f"SELECT max(version) AS version, max(needs_code) AS needs FROM {table} "
            "WHERE component = %s",
            (component.name,),
        ).fetchone()
        version, needs = (int(row[0] or 0), int(row[1] or 0)) if row else (0, 0)
        if version >= migration.version:
            return None
        if version != migration.version - 1:
            raise SchemaVersionError(
                f"{component.name} is at version {version}, cannot apply {migration.version}"
            )
        migration.apply(cursor, database)
        cursor.execute(
            f"INSERT INTO {table} (component, version, name, needs_code) VALUES (%s, %s, %s, %s)",
            (
                component.name,
                migration.version,
                migration.name,
                migration.version if migration.contracts else needs,
            ),
        )
    return Applied(component.name, migration.version, migration.name)


def _lock_timeout(database: Database, cursor: Cursor) -> None:
    database.dialect.lock_timeout(cursor, LOCK_TIMEOUT)


def _record_table_exists(database: Database, cursor: Cursor) -> bool:
    return database.dialect.table_exists(cursor, database.schema, MIGRATIONS_TABLE)


def retry_lock_races(step: Callable[[], Any]) -> Any:
    """Run `step`, again after a short backoff when it lost a lock race (up to 5 times)."""
    delays = LOCK_RACE_BACKOFF.delays()
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return step()
        except Exception as error:
            if attempt == ATTEMPTS or not lost_a_lock_race(error):
                raise
            delays.wait()
    raise AssertionError("unreachable")


def lost_a_lock_race(error: BaseException | None) -> bool:
    """A lock race anywhere in the error's chain (the library wraps psycopg's errors)."""
    while error is not None:
        if isinstance(error, LOCK_RACES):
            return True
        error = error.__cause__ or error.__context__
    return False
