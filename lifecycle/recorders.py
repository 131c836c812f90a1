"""Event-store recorders that write a new account's data key in its events' transaction.

The mapper hands each `Registered` event over with its wrapped key (`StoredEventWithKey`);
the library's `_insert_events` hook runs inside the transaction that inserts the events, so
the key row and the events commit or roll back together: a registration is one transaction,
and one that loses (a concurrent claim of its e-mail) leaves no orphan key. The database's
own trigger refuses a destroyed key; that refusal reaches callers as `KeyDestroyedError`.

`Accounts` picks the recorder for its persistence module (`recorder_topic`), unless
`APPLICATION_RECORDER_TOPIC` names another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import InfrastructureFactory, PersistenceError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore, PostgresFactory
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteFactory
from eventsourcing.utils import get_topic
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from lifecycle.crypto import KEY_DESTROYED, StoredEventWithKey
from lifecycle.errors import KeyDestroyedError

KEYS_TABLE = "account_keys"


def _keys(stored_events: Sequence[StoredEvent]) -> list[StoredEventWithKey]:
    return [s for s in stored_events if isinstance(s, StoredEventWithKey)]


class PostgresKeyRecorder(PostgresApplicationRecorder):
    """Inserts the batch's new keys in the pipelined event transaction, before the events."""

    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self.insert_keys_statement = SQL(
            "INSERT INTO {schema}.{table} (account_id, wrapped_key) "
            "SELECT * FROM unnest(%s::uuid[], %s::bytea[])"
        ).format(schema=Identifier(datastore.schema), table=Identifier(KEYS_TABLE))

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if self.datastore.enable_db_functions and _keys(stored_events):
            # The library's one-call function path has no hook for the key rows.
            raise NotImplementedError("POSTGRES_ENABLE_DB_FUNCTIONS cannot store data keys")
        try:
            ids: Sequence[int] | None = super().insert_events(stored_events, **kwargs)
        except PersistenceError as error:
            if KEY_DESTROYED in str(error):
                raise KeyDestroyedError() from None
            raise
        return ids

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        if keys := _keys(stored_events):
            curs.execute(
                self.insert_keys_statement,
                ([s.originator_id for s in keys], [s.wrapped_key for s in keys]),
                prepare=True,
            )


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


def recorder_topic(factory: InfrastructureFactory[Any]) -> str | None:
    """The key-writing recorder for this persistence module (None: not one we know)."""
    if isinstance(factory, PostgresFactory):
        return get_topic(PostgresKeyRecorder)
    if isinstance(factory, SQLiteFactory):
        return get_topic(SQLiteKeyRecorder)
    return None
