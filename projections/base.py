"""What every read model shares: the library's `Projection` and tracking recorders, one
transaction for the view update and its tracking, and a decoder that never decrypts.

A read model is a `Projection` whose view is the library's tracking recorder for its dialect
(`PostgresTrackingRecorder`, or `SQLiteTrackingRecorder` with a table of its own), so each read
model keeps its position in a `<name>_tracking` table beside its own tables. `record()` applies
a batch of notifications and upserts the tracking row in the same database transaction: both
commit or neither does. Before writing, it checks that the stored position is the one the
batch starts from (a compare-and-set on the tracking row, locked `FOR UPDATE` on PostgreSQL);
the library's own upsert then refuses a position that is not newer. The row is seeded at 0
when the read model is created, so there is always a row to lock: followers started at the
same instant on a fresh log queue on it like every later batch. A batch delivered twice, or
by two runners at once, therefore changes nothing the second time.

Read models hold no personal values at all: events reach them through `FactsMapper`, which
drops the sealed personal fields without asking the key vault, so a read model has nothing to
blank on withdrawal or erase on purge.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    IntegrityError,
    Mapper,
    Notification,
    StoredEvent,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.projection import Projection
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from eventsourcing.utils import get_topic

from lifecycle.account_terms import REDACTED
from lifecycle.crypto import SEALED_FIELD
from lifecycle.storage import Cursor, Database, SqlDialect

APPLICATION_NAME = "Accounts"
# Tables of a read model being rebuilt carry this suffix until they replace the live ones.
SHADOW_SUFFIX = "__rebuild"
# Platform weeks and months are Japan's (no daylight saving time).
JST = timezone(timedelta(hours=9), "JST")

Statement = tuple[str, tuple[Any, ...]]


class PositionMovedError(IntegrityError):
    """The tracking row is not where this batch starts: another runner (or a swap) moved it."""


# Tracking recorders, one table per read model


class NamedSQLiteTrackingRecorder(SQLiteTrackingRecorder):
    """The library's SQLite tracking recorder, with a table name of its own (its base class
    always uses `tracking`, which several read models in one file would share)."""

    def __init__(self, datastore: SQLiteDatastore, *, tracking_table_name: str) -> None:
        self.tracking_table_name = tracking_table_name
        super().__init__(datastore)
        table = tracking_table_name
        self.insert_tracking_statement = (
            f"INSERT INTO {table} VALUES (:application_name, :notification_id) "
            "ON CONFLICT (application_name) DO UPDATE SET notification_id = :notification_id "
            f"WHERE {table}.notification_id < :notification_id RETURNING notification_id"
        )
        self.select_max_tracking_id_statement = (
            f"SELECT MAX(notification_id) FROM {table} WHERE application_name=?"
        )

    def construct_create_table_statements(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.tracking_table_name} ("
            "application_name TEXT, notification_id INTEGER, "
            "PRIMARY KEY (application_name)) WITHOUT ROWID"
        ]


def tracking_recorder_for(database: Database, table: str) -> TrackingRecorder:
    datastore = database.datastore
    if isinstance(datastore, PostgresDatastore):
        return PostgresTrackingRecorder(datastore, tracking_table_name=table)
    assert isinstance(datastore, SQLiteDatastore)
    return NamedSQLiteTrackingRecorder(datastore, tracking_table_name=table)


# Writing a batch


class BatchCursor(Cursor):
    """A `Cursor` that also writes many rows per statement: one batch of a read model costs
    about one round trip to PostgreSQL instead of one per event."""

    def __init__(self, raw: Any, dialect: SqlDialect) -> None:
        super().__init__(raw, dialect)
        self._raw = raw

    def executemany(self, statement: str, rows: Sequence[tuple[Any, ...]]) -> None:
        self._raw.executemany(self.dialect.sql(statement), rows)

    def run(self, statements: Iterable[Statement]) -> None:
        """Run the statements in order: consecutive ones with the same SQL as one
        `executemany`, all of them pipelined on PostgreSQL (one wait for the results)."""
        runs: list[tuple[str, list[tuple[Any, ...]]]] = []
        for statement, params in statements:
            if runs and runs[-1][0] == statement:
                runs[-1][1].append(params)
            else:
                runs.append((statement, [params]))
        if not runs:
            return
        with self.dialect.pipelined(self._raw):
            for statement, rows in runs:
                self.executemany(statement, rows)


# Decoding without personal values


class FactsMapper(Mapper[UUID]):
    """Decodes stored events with their personal fields as `[redacted]`, never decrypting.

    Absent personal values stay None, as they were recorded.
    """

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        domain_event = super().to_domain_event(stored_event)
        state: dict[str, Any] = domain_event.__dict__
        sealed = state.pop(SEALED_FIELD, None)
        if sealed is not None:
            state.update(dict.fromkeys(sealed["fields"], REDACTED))
        return domain_event


def facts_mapper(mapper: Mapper[UUID]) -> FactsMapper:
    return FactsMapper(transcoder=mapper.transcoder)


@dataclass(frozen=True)
class Item:
    """One notification of a batch, and its event when the read model reads that topic."""

    notification: Notification
    event: Any | None


# Read models


class ReadModel(Projection[TrackingRecorder]):
    """A read model in tables of its own; subclasses declare tables and what events change."""

    name: str = ""
    topics: tuple[str, ...] = ()
    # Base names of the read model's tables (the tracking table comes on top).
    tables: ClassVar[tuple[str, ...]] = ()
    # Hash chains read stored bytes; every other read model reads decoded events.
    decodes_events: ClassVar[bool] = True
    # Each row depends on one account's events alone (`fold_statements`): a rebuild may then
    # read the log account by account (lifecycle.stored_fold) and write each row once.
    folds_streams: ClassVar[bool] = False

    def __init__(self, database: Database, *, suffix: str = "") -> None:
        self.database = database
        self.suffix = suffix
        self.tracking_table = f"{self.name}_tracking{suffix}"
        super().__init__(tracking_recorder_for(database, self.tracking_table))
        self.application_name = APPLICATION_NAME

    # Names and schema

    def table(self, base: str) -> str:
        return self.database.table(base + self.suffix)

    @property
    def physical_tables(self) -> list[str]:
        """Every table of this read model (tracking last), schema-qualified."""
        return [self.table(base) for base in self.tables] + [
            self.database.table(self.tracking_table)
        ]

    @abstractmethod
    def create_statements(self) -> list[str]:
        """CREATE TABLE / INDEX IF NOT EXISTS statements, named through `table()`."""

    def create(self) -> None:
        """Create the tables when missing, in a DDL turn of their own (a rebuild's shadow
        tables; the live ones come from the `read-models` migrations)."""
        with self.database.ddl() as cursor:
            self.create_in(cursor)

    def create_in(self, cursor: Cursor) -> None:
        """The tracking table (the library's statement), the model's own, the seeded row."""
        self.database.dialect.create_library_tables(cursor, self.view)
        for statement in self.create_statements():
            cursor.execute(statement)
        self._seed_position(cursor)

    def drop(self) -> None:
        with self.database.ddl() as cursor:
            for table in self.physical_tables:
                cursor.execute(f"DROP TABLE IF EXISTS {table}")

    # Processing

    def changes(self, event: Any) -> Iterable[Statement]:
        """The statements one decoded event makes; read models that need more override apply."""
        return ()

    def apply(self, cursor: BatchCursor, items: Sequence[Item]) -> None:
        cursor.run(
            statement
            for item in items
            if item.event is not None
            for statement in self.changes(item.event)
        )

    def fold_statements(self, events: Iterable[tuple[str, dict[str, Any]]]) -> list[Statement]:
        """The statements a batch of events makes, each given as (topic, its facts); only
        read models that `folds_streams` have them."""
        raise NotImplementedError

    def record_folded(
        self, events: Sequence[tuple[str, dict[str, Any]]], position: int | None = None
    ) -> None:
        """A rebuild's batch of whole streams, in one transaction; `position`: where the
        rebuilt model then stands (its last batch)."""
        with self.database.datastore.transaction(commit=True) as raw:
            BatchCursor(raw, self.database.dialect).run(self.fold_statements(events))
            if position is not None:
                self.view._insert_tracking(raw, Tracking(self.application_name, position))  # type: ignore[attr-defined]

    def record(self, items: Sequence[Item], tracking: Tracking, expected_position: int) -> None:
        """Apply a batch and move the position to `tracking`, in one transaction.

        Raises PositionMovedError when the stored position is not `expected_position`, and
        the library's IntegrityError when `tracking` is not newer than the stored position.
        """
        view = self.view
        with self.database.datastore.transaction(commit=True) as raw:
            cursor = BatchCursor(raw, self.database.dialect)
            stored = self._locked_position(cursor)
            if stored != expected_position:
                raise PositionMovedError(
                    f"{self.name} is at {stored}, the batch starts after {expected_position}"
                )
            self.apply(cursor, items)
            view._insert_tracking(raw, tracking)  # type: ignore[attr-defined]

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """The library's one-event entry point (e.g. for its ProjectionRunner)."""
        notification = Notification(
            id=tracking.notification_id,
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=get_topic(type(domain_event)),
            state=b"",
        )
        wanted = not self.decodes_events or notification.topic in self.topics
        expected = self.position()
        self.record([Item(notification, domain_event if wanted else None)], tracking, expected)

    def _locked_position(self, cursor: Cursor) -> int:
        """The stored position, its row locked until the transaction ends (PostgreSQL).

        The row always exists (seeded at 0), so the first batches of followers started
        together queue on it like every later batch. Tables made before the seeding get
        their row here: a concurrent seeder's uncommitted row makes the INSERT wait for
        that transaction, and the SELECT after it then sees the position it committed.
        On SQLite one writer at a time serialises the batches anyway.
        """
        select = (
            f"SELECT notification_id FROM {self.database.table(self.tracking_table)} "
            f"WHERE application_name = %s{self.database.dialect.for_update}"
        )
        row = cursor.execute(select, (self.application_name,)).fetchone()
        if row is None:
            self._seed_position(cursor)
            row = cursor.execute(select, (self.application_name,)).fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def _seed_position(self, cursor: Cursor) -> None:
        """The tracking row at position 0, when there is none yet."""
        cursor.execute(
            f"INSERT INTO {self.database.table(self.tracking_table)} "
            "(application_name, notification_id) VALUES (%s, 0) "
            "ON CONFLICT (application_name) DO NOTHING",
            (self.application_name,),
        )

    def position(self) -> int:
        """The last notification id this read model has applied (0: none)."""
        return self.view.max_tracking_id(self.application_name) or 0

    def exists(self) -> bool:
        """Its tables were created (by `create()`, or a rebuild in progress)."""
        return self.database.table_exists(self.tracking_table)

    def before_swap(self, cursor: Cursor, live: ReadModel) -> None:
        """Called inside the swap transaction of a rebuild (self is the rebuilt model);
        raise to refuse the swap."""
        return None

    # Values in either dialect

    def ts(self, value: datetime | None) -> datetime | str | None:
        """Timestamps as the dialect keeps them: timestamptz, or ISO 8601 UTC text."""
        return None if value is None else self.database.dialect.timestamp(value)

    def id(self, account_id: UUID) -> UUID | str:
        return self.database.id_param(account_id)


def as_uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(value)


def jst_week_start(moment: datetime) -> str:
    """The Monday (JST) of the week that holds `moment`, as YYYY-MM-DD."""
    day = moment.astimezone(JST).date()
    return (day - timedelta(days=day.weekday())).isoformat()


def jst_month(moment: datetime) -> str:
    return moment.astimezone(JST).strftime("%Y-%m")


def upsert_adding(table: str, keys: dict[str, Any], counts: dict[str, Any]) -> Statement:
    """INSERT a row of counts, or add the counts to the row already there."""
    columns = [*keys, *counts]
    placeholders = ", ".join(["%s"] * len(columns))
    additions = ", ".join(f"{name} = saved.{name} + excluded.{name}" for name in counts)
    statement = (
        f"INSERT INTO {table} AS saved ({', '.join(columns)}) VALUES ({placeholders}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {additions}"
    )
    return statement, (*keys.values(), *counts.values())
