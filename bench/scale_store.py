"""A large store loaded fast, as the running service would find it (the `scale` case's load).

`load_store(accounts, events)` appends about `events` events with `bench.workload.generate_log`
(the application's own mapper seals and encodes each event with a per-account key, the stored
events and the wrapped keys go in with COPY, not through the API), and with each batch:

- the account directory's rows (the read model the admin API lists), folded in memory from
  the batch's own events exactly as `AccountDirectory.changes` would apply them, copied in;
- at the end, the positions the workers start from: the relay's (`relay_position`, so a relay
  does not publish the whole load to Kafka) and the directory's tracking row, both at the head
  of the notification log.

The other read models (statistics, hash chain) are left empty at position 0: the case runs no
projector, and a `lifecycle project` started on this store would catch them up.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore

from bench.workload import GeneratedLog, generate_log
from lifecycle.account_terms import AccountStatus
from lifecycle.application import Accounts
from lifecycle.domain import Account
from projections.base import APPLICATION_NAME
from projections.directory import COLUMNS as DIRECTORY_TABLE_COLUMNS
from projections.directory import AccountDirectory

RELAY_NAME = "kafka"  # `lifecycle relay`'s default name
# The directory's columns a loaded (never withdrawn, never gifted) account fills.
DIRECTORY_COLUMNS = DIRECTORY_TABLE_COLUMNS[:8]
DIRECTORY_TYPES = ("uuid", "text", "timestamptz", "text", "text", "int8", "timestamptz", "int4")


def directory_rows(events: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The directory's row of each account registered in `events` (all of its events are in
    them, as in one batch of `generate_log`), after those events."""
    rows: dict[UUID, list[Any]] = {}
    for event in events:
        if not isinstance(event, Account.Event):
            continue  # e-mail claims have no directory row
        at: datetime = event.timestamp
        if isinstance(event, Account.Registered):
            rows[event.originator_id] = [
                event.originator_id,
                AccountStatus.ACTIVE.value,
                at,
                _text(event.channel),
                event.consent_version,
                event.originator_version,
                at,
                0,
            ]
            continue
        row = rows[event.originator_id]
        row[5], row[6] = event.originator_version, at
        if isinstance(event, Account.ScoutReceived):
            row[7] += 1
        elif not isinstance(event, Account.PreferencesEdited):
            raise ValueError(f"the load makes no {type(event).__name__}: fold it here first")
    return [tuple(row) for row in rows.values()]


def _text(value: Any) -> str:
    return str(getattr(value, "value", value))


class _DirectoryCopier:
    """Copies each batch's directory rows in, in a transaction of its own."""

    def __init__(self, accounts: Accounts) -> None:
        datastore = accounts.database.datastore
        if not isinstance(datastore, PostgresDatastore):
            raise RuntimeError("the scale load writes with COPY: PostgreSQL only")
        self.datastore = datastore
        self.statement = (
            f"COPY {accounts.database.table(AccountDirectory.tables[0])} "
            f"({', '.join(DIRECTORY_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
        )

    def __call__(self, events: list[Any]) -> None:
        with self.datastore.transaction(commit=True) as cursor, cursor.copy(self.statement) as copy:
            copy.set_types(list(DIRECTORY_TYPES))
            for row in directory_rows(events):
                copy.write_row(row)


def set_positions(accounts: Accounts) -> int:
    """The relay's and the directory's positions at the head of the log; the head."""
    head = accounts.recorder.max_notification_id() or 0
    db = accounts.database
    with db.transaction(commit=True) as cursor:
        cursor.execute(
            f"INSERT INTO {db.table('relay_position')} (name, position) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
            (RELAY_NAME, head),
        )
        cursor.execute(
            f"INSERT INTO {db.table(f'{AccountDirectory.name}_tracking')} "
            "(application_name, notification_id) VALUES (%s, %s) "
            "ON CONFLICT (application_name) "
            "DO UPDATE SET notification_id = EXCLUDED.notification_id",
            (APPLICATION_NAME, head),
        )
    return head


def load_store(accounts: Accounts, events: int) -> GeneratedLog:
    """About `events` more events (6 per member: see generate_log), their keys and directory
    rows; the positions moved to the new head. The members' ids are kept."""
    loaded = generate_log(accounts, events, keep_ids=True, on_batch=_DirectoryCopier(accounts))
    set_positions(accounts)
    return loaded
