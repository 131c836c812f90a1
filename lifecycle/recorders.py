"""Event-store recorders that write a new account's data key in its events' transaction.

The mapper hands each `Registered` event over with its wrapped key (`StoredEventWithKey`);
the library's `_insert_events` hook runs inside the transaction that inserts the events, so
the key row and the events commit or roll back together: a registration is one transaction,
and one that loses (a concurrent claim of its e-mail) leaves no orphan key. The database's
own trigger refuses a destroyed key; that refusal reaches callers as `KeyDestroyedError`.

A write whose outcome is unknown is found out, never guessed. When the connection fails
while the events' transaction commits (the COMMIT sent, its answer lost), the library's
recorder would run the insert again (`@retry` on `OperationalError`), and the second insert
would conflict with the first one's own events: a stored write reported as a conflict. The
PostgreSQL recorder instead asks the database, after any connection failure, whether this
batch's events are stored (their ids and versions are known; their sealed state bytes are
unique to this write), and only inserts again when they are not (`in_doubt_insert`).

`Accounts` picks the recorder for its persistence module (`recorder_topic`), unless
`APPLICATION_RECORDER_TOPIC` names another.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    InfrastructureFactory,
    InterfaceError,
    OperationalError,
    PersistenceError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore, PostgresFactory
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteFactory
from eventsourcing.utils import get_topic, retry
from psycopg.abc import Query
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Composable, Identifier

from lifecycle.crypto import KEY_DESTROYED, KEYS_TABLE, StoredEventWithKey
from lifecycle.errors import KeyDestroyedError

# Measured (bench commands, both ways in one sitting): no gain over the pipelined
# transaction, and the library's function inserts without the table lock that keeps the
# notification log in commit order, which the relay relies on to miss nothing.
DB_FUNCTIONS_REFUSED = (
    "POSTGRES_ENABLE_DB_FUNCTIONS is not supported: its insert skips the table lock that keeps "
    "the notification log in commit order, and it has no place for the key rows"
)


def _version(event: tuple[int, str, bytes]) -> int:
    return event[0]


def _keys(stored_events: Sequence[StoredEvent]) -> list[StoredEventWithKey]:
    return [s for s in stored_events if isinstance(s, StoredEventWithKey)]


# Attempts at an insert whose connection failed, and the pause between them (the library's).
INSERT_ATTEMPTS = 10
INSERT_RETRY_WAIT_S = 0.2
# How long finding out waits for a commit still in flight (it holds the events table's lock).
IN_DOUBT_LOCK_TIMEOUT_S = 5


class WriteOutcomeUnknownError(OperationalError):
    """The database stayed unreachable after a connection failed during a write, so whether
    the write was stored could not be found out (the API answers 503; a retry with the same
    idempotency key, or a read, tells)."""

    code = "write_outcome_unknown"


class PostgresKeyRecorder(PostgresApplicationRecorder):
    """Inserts the batch's new keys in the pipelined event transaction, before the events;
    reads an aggregate's events and its key in one round trip (see `select_events`)."""

    # Told each wrapped key (None: no key) read with an aggregate's events.
    key_seen: Callable[[UUID, bytes | None], object] | None = None

    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        if datastore.enable_db_functions:
            raise ValueError(DB_FUNCTIONS_REFUSED)
        super().__init__(datastore, events_table_name=events_table_name)
        keys = SQL("{schema}.{table}").format(
            schema=Identifier(datastore.schema), table=Identifier(KEYS_TABLE)
        )
        events_table = SQL("{schema}.{table}").format(
            schema=Identifier(datastore.schema), table=Identifier(self.events_table_name)
        )
        # An aggregate's events with its wrapped key on each row (one lookup, an InitPlan):
        # one statement, so loading an account is one round trip.
        self.select_events_with_key_statement = _text(
            SQL(
                "SELECT originator_id, originator_version, topic, state, "
                "(SELECT wrapped_key FROM {keys} WHERE account_id = %s) AS wrapped_key "
                "FROM {events} WHERE originator_id = %s"
            ).format(keys=keys, events=events_table)
        )
        # Each aggregate's events after a version (0: all of them), for a bulk command's
        # hundreds of accounts in one round trip; no keys (its rules need no personal value).
        # LATERAL with OFFSET 0 (so it is not flattened into a join): one index range scan
        # per aggregate. A plain join was planned as a hash join over a sequential scan of
        # the whole events table (6 ms at 26k events, growing with the table). Rows are
        # put in version order in Python: sorting them here cost more than the scans.
        self.select_events_after_statement = _text(
            SQL(
                "SELECT c.id, e.originator_version, e.topic, e.state "
                "FROM unnest(%b::{id_type}[], %b::bigint[]) AS c(id, version) "
                "CROSS JOIN LATERAL (SELECT originator_version, topic, state FROM {events} "
                "WHERE originator_id = c.id AND originator_version > c.version OFFSET 0) AS e"
            ).format(id_type=SQL(datastore.originator_id_type), events=events_table)
        )
        self._select_statements: dict[tuple[bool, bool, bool, bool], str] = {}
        # Finding out whether an in-doubt write landed (rare: only after a connection failed).
        self.lock_timeout_statement = f"SET LOCAL lock_timeout = '{IN_DOUBT_LOCK_TIMEOUT_S}s'"
        # SHARE conflicts with the writers' EXCLUSIVE lock: a commit in flight finishes first.
        self.share_lock_statement = _text(
            SQL("LOCK TABLE {events} IN SHARE MODE").format(events=events_table)
        )
        self.select_stored_statement = _text(
            SQL(
                "SELECT originator_id, originator_version, state, notification_id FROM {events} "
                "WHERE (originator_id, originator_version) IN "
                "(SELECT * FROM unnest(%s::{id_type}[], %s::integer[]))"
            ).format(events=events_table, id_type=SQL(datastore.originator_id_type))
        )
        # Migration 1's write in one statement (key rows, then the library's own lock, notify
        # and insert, in its order) over the library's composite type, run by the previous
        # release inside a pipelined BEGIN/COMMIT; kept until a contracting migration.
        function = SQL("{schema}.{name}").format(
            schema=Identifier(datastore.schema),
            name=Identifier(f"lifecycle_insert_events_{datastore.originator_id_type}"),
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {function}(events {schema}.{event}[], "
                "key_ids uuid[], wrapped_keys bytea[]) RETURNS SETOF bigint "
                "LANGUAGE plpgsql AS $BODY$ BEGIN "
                "INSERT INTO {keys} (account_id, wrapped_key) "
                "SELECT * FROM unnest(key_ids, wrapped_keys); "
                "SET LOCAL lock_timeout = '{lock_timeout}s'; "
                "LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; "
                "NOTIFY {channel}; "
                "RETURN QUERY INSERT INTO {schema}.{table} AS t "
                "(originator_id, originator_version, topic, state) "
                "SELECT originator_id, originator_version, topic, state FROM unnest(events) "
                "RETURNING notification_id; "
                "END $BODY$"
            ).format(
                function=function,
                schema=Identifier(datastore.schema),
                event=Identifier(self.stored_event_type_name),
                keys=keys,
                lock_timeout=datastore.lock_timeout,
                table=Identifier(self.events_table_name),
                channel=Identifier(self.channel_name),
            )
        )
        # Migration 4's insert over plain arrays, one statement in an implicit transaction:
        # no BEGIN/COMMIT, no pipeline, no composite-array dump (see insert_once).
        arrays_function = SQL("{schema}.{name}").format(
            schema=Identifier(datastore.schema),
            name=Identifier(f"lifecycle_insert_event_arrays_{datastore.originator_id_type}"),
        )
        self.create_arrays_function_statement = _text(
            SQL(
                "CREATE OR REPLACE FUNCTION {function}(ids {id_type}[], versions bigint[], "
                "topics text[], states bytea[], key_ids uuid[], wrapped_keys bytea[]) "
                "RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$ BEGIN "
                "INSERT INTO {keys} (account_id, wrapped_key) "
                "SELECT * FROM unnest(key_ids, wrapped_keys); "
                "SET LOCAL lock_timeout = '{lock_timeout}s'; "
                "LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; "
                "NOTIFY {channel}; "
                "RETURN QUERY INSERT INTO {schema}.{table} "
                "(originator_id, originator_version, topic, state) "
                "SELECT * FROM unnest(ids, versions, topics, states) "
                "RETURNING notification_id; "
                "END $BODY$"
            ).format(
                function=arrays_function,
                id_type=SQL(datastore.originator_id_type),
                schema=Identifier(datastore.schema),
                keys=keys,
                lock_timeout=datastore.lock_timeout,
                table=Identifier(self.events_table_name),
                channel=Identifier(self.channel_name),
            )
        )
        # Arrays go in binary (%b): psycopg dumps a list as text in Python, element by
        # element, about ten times the CPU of its binary dump (1.6 ms against 0.16 ms for
        # a bulk request's 200 events).
        self.insert_arrays_call = _text(
            SQL(
                "SELECT * FROM {function}(%b::{id_type}[], %b::bigint[], %b::text[], "
                "%b::bytea[], %b::uuid[], %b::bytea[]) AS notification_id"
            ).format(function=arrays_function, id_type=SQL(datastore.originator_id_type))
        )
        # One event without a key (an edit, a scout, a withdrawal): the same function, its
        # arrays built by the server from four scalars; psycopg's list dumpers cost ~25 µs
        # of CPU per call for the six one-element or empty lists.
        self.insert_one_call = _text(
            SQL(
                "SELECT * FROM {function}(ARRAY[%b::{id_type}], ARRAY[%b::bigint], "
                "ARRAY[%b::text], ARRAY[%b::bytea], '{{}}'::uuid[], '{{}}'::bytea[]) "
                "AS notification_id"
            ).format(function=arrays_function, id_type=SQL(datastore.originator_id_type))
        )

    def insert_once(self, stored_events: Sequence[StoredEvent]) -> Sequence[int] | None:
        """One statement, one round trip: migration 4's function over plain arrays, in the
        implicit transaction of an autocommit connection (it commits at the Sync that ends
        the statement; the library's pipelined insert synced after each step and once more
        on leaving its pipeline: six round trips). Any failure here leaves the outcome to
        `in_doubt_insert`: a connection lost after the statement was sent may have committed."""
        if not stored_events:
            return None
        keys = _keys(stored_events)
        if len(stored_events) == 1 and not keys:
            [one] = stored_events
            return self._insert(
                self.insert_one_call,
                (one.originator_id, one.originator_version, one.topic, one.state),
            )
        params = (
            [s.originator_id for s in stored_events],
            [s.originator_version for s in stored_events],
            [s.topic for s in stored_events],
            [s.state for s in stored_events],
            [s.originator_id for s in keys],
            [s.wrapped_key for s in keys],
        )
        return self._insert(self.insert_arrays_call, params)

    def _insert(self, statement: str, params: Sequence[Any]) -> list[int]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, params, prepare=True)
            return [row["notification_id"] for row in curs.fetchall()]

    def _select_statement(self, gt: bool, lte: bool, desc: bool, limit: bool) -> str:
        shape = (gt, lte, desc, limit)
        if (found := self._select_statements.get(shape)) is not None:
            return found
        statement = self.select_events_with_key_statement
        statement += " AND originator_version > %s" if gt else ""
        statement += " AND originator_version <= %s" if lte else ""
        statement += f" ORDER BY originator_version {'DESC' if desc else 'ASC'}"
        statement += " LIMIT %s" if limit else ""
        self._select_statements[shape] = statement
        return statement

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """The library's query with the aggregate's wrapped key on each row: loading an
        account for a command is one round trip, not three (events, then the key in a
        transaction of its own). An aggregate without events has no key (a key commits
        with its account's first event)."""
        key_seen = self.key_seen
        if key_seen is None or not isinstance(originator_id, UUID):
            found: Sequence[StoredEvent] = super().select_events(
                originator_id, gt=gt, lte=lte, desc=desc, limit=limit
            )
            return found
        statement = self._select_statement(gt is not None, lte is not None, desc, limit is not None)
        params = [
            value for value in (originator_id, originator_id, gt, lte, limit) if value is not None
        ]
        with self.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(statement, params, prepare=True)
            rows = cursor.fetchall()
        wrapped = rows[0]["wrapped_key"] if rows else None
        key_seen(originator_id, None if wrapped is None else bytes(wrapped))
        return [
            StoredEvent(
                originator_id=row["originator_id"],
                originator_version=row["originator_version"],
                topic=row["topic"],
                state=bytes(row["state"]),
            )
            for row in rows
        ]

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_events_after(
        self, positions: Sequence[tuple[UUID, int]]
    ) -> dict[UUID, list[tuple[int, str, bytes]]]:
        """Each aggregate's events after the version given with it (0: every event), as
        (version, topic, state) in version order: one round trip for a bulk command's
        hundreds of accounts, nothing for one that has not moved since that version."""
        ids = [originator_id for originator_id, _ in positions]
        versions = [version for _, version in positions]
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cursor:
            cursor.execute(self.select_events_after_statement, (ids, versions), prepare=True)
            rows = cursor.fetchall()
        found: dict[UUID, list[tuple[int, str, bytes]]] = {}
        for originator_id, version, topic, state in rows:
            found.setdefault(originator_id, []).append((version, topic, bytes(state)))
        for events in found.values():
            events.sort(key=_version)
        return found

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        try:
            return self.in_doubt_insert(stored_events, **kwargs)
        except WriteOutcomeUnknownError:
            raise
        except PersistenceError as error:
            if KEY_DESTROYED in str(error):
                raise KeyDestroyedError() from None
            raise

    def in_doubt_insert(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """`insert_once`, retried after a connection failure only once the database said
        this batch is not stored; when it is, its notification ids, as if answered."""
        if not stored_events:
            return None
        in_doubt: OperationalError | InterfaceError | None = None
        for attempt in range(INSERT_ATTEMPTS):
            if attempt:
                time.sleep(INSERT_RETRY_WAIT_S * (1 + 0.1 * (random.random() - 0.5)))  # noqa: S311
            try:
                if in_doubt is not None:
                    if (landed := self.stored_ids(stored_events)) is not None:
                        return landed
                    in_doubt = None  # not stored: insert again
                return self.insert_once(stored_events)
            except (InterfaceError, OperationalError) as error:
                in_doubt = error
        raise WriteOutcomeUnknownError(str(in_doubt)) from in_doubt

    def stored_ids(self, stored_events: Sequence[StoredEvent]) -> list[int] | None:
        """The notification ids of exactly these events if they are stored (same aggregate,
        version and bytes: a write of another writer at the same version differs in its
        bytes), None if they are not. Waits, bounded, for a commit still in flight."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.lock_timeout_statement)
            curs.execute(self.share_lock_statement)
            curs.execute(
                self.select_stored_statement,
                (
                    [s.originator_id for s in stored_events],
                    [s.originator_version for s in stored_events],
                ),
            )
            rows = {
                (row["originator_id"], row["originator_version"]): row for row in curs.fetchall()
            }
        ids = []
        for stored in stored_events:
            row = rows.get((stored.originator_id, stored.originator_version))
            if row is None or bytes(row["state"]) != stored.state:
                return None  # a transaction is all or nothing: one missing means none
            ids.append(int(row["notification_id"]))
        return ids


class SQLiteKeyRecorder(SQLiteApplicationRecorder):
    """Inserts the batch's new keys in the event transaction, before the events."""

    insert_keys_statement = f"INSERT INTO {KEYS_TABLE} (account_id, wrapped_key) VALUES (?, ?)"

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        try:
            return super().insert_events(stored_events, **kwargs)
        except PersistenceError as error:
            if KEY_DESTROYED in str(error):
                raise KeyDestroyedError() from None
            raise

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if keys := _keys(stored_events):
            c.executemany(
                self.insert_keys_statement,
                [(_text_id(s.originator_id), s.wrapped_key) for s in keys],
            )
        return super()._insert_events(c, stored_events, **kwargs)


def _text_id(originator_id: UUID | str) -> str:
    """Ids as the SQLite recorder stores them: hex text."""
    return originator_id.hex if isinstance(originator_id, UUID) else originator_id


def _text(statement: Query) -> str:
    if isinstance(statement, str | bytes):
        return statement if isinstance(statement, str) else statement.decode()
    if isinstance(statement, Composable):
        return statement.as_string(None)
    raise TypeError(f"cannot render {type(statement).__name__} once")


def recorder_topic(factory: InfrastructureFactory[Any]) -> str | None:
    """The key-writing recorder for this persistence module (None: not one we know)."""
    if isinstance(factory, PostgresFactory):
        return get_topic(PostgresKeyRecorder)
    if isinstance(factory, SQLiteFactory):
        return get_topic(SQLiteKeyRecorder)
    return None
