"""The service's own schema (component `lifecycle`): every table, index, function and trigger
of the lifecycle database outside the read models and the erasure consumer's kit tables.

How to add a migration: append `Migration(N + 1, "what it does", _function)` to `LIFECYCLE`
below, with a function that runs its DDL on the cursor it is given, in both dialects
(`database.dialect`, `database.table(name)` for schema-qualified names, `database.id_type`,
`timestamp_type`, `blob_type`, `now`). Never edit a released migration: databases already ran
it. Expand only (new tables, new columns nullable or with a default, new indexes, a new trigger
or function beside the old one); removing what the previous release still uses is a later
release's migration with `contracts=True`. Then `lifecycle migrate`; the suite's fixtures
migrate every test database, and `tests/integration/test_migrations.py` checks the rest.

Migration 1 is the schema of the first release, written out as it stood (IF NOT EXISTS
throughout), so a database that release created is adopted without change. The event store's
own tables are the library's (its recorders are told not to create them at run time): the
migration runs the recorder's create statements, pinned with the library (`eventsourcing<9.6`).
"""

from __future__ import annotations

from typing import Any

from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore

from lifecycle import event_names
from lifecycle.migrator import Component, Migration
from lifecycle.recorders import PostgresKeyRecorder, SQLiteKeyRecorder
from lifecycle.storage import Cursor, Database

COMPONENT = "lifecycle"


def _event_store(cursor: Cursor, db: Database) -> None:
    """The library's events table (and, on PostgreSQL, its row type, notification index and
    our one-statement insert function)."""
    datastore = db.datastore
    if isinstance(datastore, PostgresDatastore):
        table = db.events_table.rpartition(".")[2]
        recorder = PostgresKeyRecorder(datastore, events_table_name=table)
        raw: Any = cursor.raw
        for statement in recorder.sql_create_statements:
            text = statement.as_string(raw.connection)
            if text.startswith("CREATE TYPE") and _type_exists(cursor, db, text):
                continue  # no IF NOT EXISTS for types
            raw.execute(statement, prepare=False)
        return
    assert isinstance(datastore, SQLiteDatastore)
    for text in SQLiteKeyRecorder(datastore).create_table_statements:
        cursor.execute(text)


def _type_exists(cursor: Cursor, db: Database, statement: str) -> bool:
    name = statement.split()[2].rpartition(".")[2].strip('"')
    row = cursor.execute(
        "SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE n.nspname = %s AND t.typname = %s",
        (db.schema, name),
    ).fetchone()
    return bool(row and row[0])


def _keys(cursor: Cursor, db: Database) -> None:
    """Account keys, their tombstones, and the triggers that destroy a key with `Purged` and
    refuse its return. A trigger is created only when missing: replacing one locks its table
    (deadlocking with a registration mid-transaction on a live schema); changing one is a new
    trigger of another name, beside it."""
    keys, destroyed = db.table("account_keys"), db.table("destroyed_keys")
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {keys} (account_id {db.id_type} PRIMARY KEY, "
        f"wrapped_key {db.blob_type} NOT NULL, "
        f"created_at {db.timestamp_type} NOT NULL DEFAULT {db.now})"
    )
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {destroyed} (account_id {db.id_type} PRIMARY KEY, "
        f"destroyed_at {db.timestamp_type} NOT NULL DEFAULT {db.now})"
    )
    triggers = db.dialect.pick(postgres=_key_triggers_postgres, sqlite=_key_triggers_sqlite)
    triggers(cursor, db, keys, destroyed)


def _key_triggers_sqlite(cursor: Cursor, db: Database, keys: str, destroyed: str) -> None:
    cursor.execute(
        "CREATE TRIGGER IF NOT EXISTS destroy_key_on_purge "
        f"AFTER INSERT ON {db.events_table} "
        f"WHEN NEW.topic = '{event_names.PURGED}' BEGIN "
        f"DELETE FROM {keys} WHERE account_id = NEW.originator_id; "
        f"INSERT OR IGNORE INTO {destroyed} (account_id) VALUES (NEW.originator_id); END"
    )
    cursor.execute(
        f"CREATE TRIGGER IF NOT EXISTS refuse_destroyed_key BEFORE INSERT ON {keys} "
        f"WHEN EXISTS (SELECT 1 FROM {destroyed} WHERE account_id = NEW.account_id) "
        "BEGIN SELECT RAISE(ABORT, 'key_destroyed'); END"
    )
    for statement in db.dialect.lock_table_statements():
        cursor.execute(statement)


def _key_triggers_postgres(cursor: Cursor, db: Database, keys: str, destroyed: str) -> None:
    destroy_fn, refuse_fn = db.table("destroy_key_on_purge"), db.table("refuse_destroyed_key")
    existing = triggers_in(cursor, db)
    cursor.execute(
        f"CREATE OR REPLACE FUNCTION {destroy_fn}() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN "
        f"DELETE FROM {keys} WHERE account_id = NEW.originator_id; "
        f"INSERT INTO {destroyed} (account_id) VALUES (NEW.originator_id) "
        "ON CONFLICT DO NOTHING; RETURN NULL; END $$"
    )
    if "destroy_key_on_purge" not in existing:
        cursor.execute(
            "CREATE TRIGGER destroy_key_on_purge "
            f"AFTER INSERT ON {db.events_table} "
            f"FOR EACH ROW WHEN (NEW.topic = '{event_names.PURGED}') "
            f"EXECUTE FUNCTION {destroy_fn}()"
        )
    cursor.execute(
        f"CREATE OR REPLACE FUNCTION {refuse_fn}() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN "
        f"IF EXISTS (SELECT 1 FROM {destroyed} WHERE account_id = NEW.account_id) "
        "THEN RAISE EXCEPTION 'key_destroyed'; END IF; RETURN NEW; END $$"
    )
    if "refuse_destroyed_key" not in existing:
        cursor.execute(
            f"CREATE TRIGGER refuse_destroyed_key BEFORE INSERT ON {keys} "
            f"FOR EACH ROW EXECUTE FUNCTION {refuse_fn}()"
        )


def triggers_in(cursor: Cursor, db: Database) -> set[str]:
    """Names of the triggers on the schema's tables (PostgreSQL)."""
    rows = cursor.execute(
        "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND NOT t.tgisinternal",
        (db.schema,),
    ).fetchall()
    return {str(row[0]) for row in rows}


def _process_tables(cursor: Cursor, db: Database) -> None:
    """The relay's position, the erasure process's confirmations, retries and receipts, and
    the admin API's records of dead-letter actions and decrypted audit reads."""
    ts, now, ident = db.timestamp_type, db.now, db.id_type
    statements = [
        f"CREATE TABLE IF NOT EXISTS {db.table('relay_position')} ("
        "name TEXT PRIMARY KEY, position BIGINT NOT NULL, "
        f"updated_at {ts} NOT NULL DEFAULT {now})",
        f"CREATE TABLE IF NOT EXISTS {db.table('erasure_confirmations')} ("
        f"account_id {ident} NOT NULL, service TEXT NOT NULL, "
        "outcome TEXT NOT NULL, rows_removed INTEGER NOT NULL, "
        "confirmation_id TEXT NOT NULL, error_code TEXT, "
        f"recorded_at {ts} NOT NULL DEFAULT {now}, "
        "PRIMARY KEY (account_id, service))",
        f"CREATE TABLE IF NOT EXISTS {db.table('erasure_retries')} ("
        f"account_id {ident} NOT NULL, service TEXT NOT NULL, "
        f"requested_at {ts} NOT NULL, attempts INTEGER NOT NULL, "
        "PRIMARY KEY (account_id, service))",
        f"CREATE TABLE IF NOT EXISTS {db.table('erasure_receipts')} ("
        f"receipt_id {ident} PRIMARY KEY, account_id {ident} NOT NULL UNIQUE, "
        f"issued_at {ts} NOT NULL DEFAULT {now}, "
        "chain_position BIGINT NOT NULL, chain_link TEXT NOT NULL, body TEXT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {db.table('dead_letter_actions')} ("
        "topic TEXT NOT NULL, partition INTEGER NOT NULL, record_offset BIGINT NOT NULL, "
        f"action TEXT NOT NULL, acted_at {ts} NOT NULL "
        f"DEFAULT {now}, PRIMARY KEY (topic, partition, record_offset))",
        f"CREATE TABLE IF NOT EXISTS {db.table('personal_data_reads')} ("
        f"read_at {ts} NOT NULL DEFAULT {now}, "
        f"account_id {ident} NOT NULL, role TEXT NOT NULL, "
        "request_id TEXT, events INTEGER NOT NULL)",
    ]
    for statement in statements:
        cursor.execute(statement)


def _idempotency_keys(cursor: Cursor, db: Database) -> None:
    """The first answers kept per idempotency key (lifecycle.idempotency)."""
    table = db.table("idempotency_keys")
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {table} ("
        "scope TEXT NOT NULL, idem_key TEXT NOT NULL, "
        f"fingerprint {db.blob_type} NOT NULL, started_at DOUBLE PRECISION NOT NULL, "
        f"expires_at DOUBLE PRECISION NOT NULL, status INTEGER, answer {db.blob_type}, "
        f"account_id {db.id_type}, PRIMARY KEY (scope, idem_key))"
    )
    cursor.execute(f"CREATE INDEX IF NOT EXISTS idempotency_keys_account ON {table} (account_id)")
    cursor.execute(f"CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON {table} (expires_at)")


def _erasure_refusals(cursor: Cursor, db: Database) -> None:
    """Confirmations refused, counted per service and reason (lifecycle.erasure_refusals)."""
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {db.table('erasure_refusals')} ("
        "service TEXT NOT NULL, reason TEXT NOT NULL, refused BIGINT NOT NULL, "
        "PRIMARY KEY (service, reason))"
    )


def _first_release(cursor: Cursor, db: Database) -> None:
    _event_store(cursor, db)
    _keys(cursor, db)
    _process_tables(cursor, db)


def _insert_over_arrays(cursor: Cursor, db: Database) -> None:
    """The insert as one statement over plain arrays (`PostgresKeyRecorder.insert_once`), beside
    migration 1's over the composite type, which the previous release still calls. SQLite
    inserts from Python: nothing to add."""
    datastore = db.datastore
    if isinstance(datastore, PostgresDatastore):
        table = db.events_table.rpartition(".")[2]
        recorder = PostgresKeyRecorder(datastore, events_table_name=table)
        raw: Any = cursor.raw
        raw.execute(recorder.create_arrays_function_statement, prepare=False)


LIFECYCLE = Component(
    COMPONENT,
    (
        Migration(1, "first release: event store, keys, shredding triggers", _first_release),
        Migration(2, "idempotency keys", _idempotency_keys),
        Migration(3, "erasure refusals", _erasure_refusals),
        Migration(4, "the event insert as one statement over plain arrays", _insert_over_arrays),
    ),
)


# The data export (lifecycle.data_export): a component of its own, versioned apart from the
# service's, so its migrations never contend with the service's numbering.

DATA_EXPORT_COMPONENT = "data_export"
EXPORT_KEYS, EXPORT_CHUNKS, EXPORTS = "data_export_keys", "data_export_chunks", "data_exports"


def _data_export_tables(cursor: Cursor, db: Database) -> None:
    """Each export's private key (wrapped), the sealed chunks of its parts, and one status row
    per export for ops' lists; triggers delete an account's keys and chunks in the transaction
    that records its `WithdrawalRequested` or `Purged`, so no export outlives either."""
    ts, now, ident, blob = db.timestamp_type, db.now, db.id_type, db.blob_type
    keys, chunks, exports = db.table(EXPORT_KEYS), db.table(EXPORT_CHUNKS), db.table(EXPORTS)
    statements = [
        f"CREATE TABLE IF NOT EXISTS {keys} (export_id {ident} PRIMARY KEY, "
        f"account_id {ident} NOT NULL, wrapped_key {blob} NOT NULL, "
        f"created_at {ts} NOT NULL DEFAULT {now})",
        f"CREATE INDEX IF NOT EXISTS data_export_keys_account ON {keys} (account_id)",
        f"CREATE TABLE IF NOT EXISTS {chunks} (export_id {ident} NOT NULL, "
        f"account_id {ident} NOT NULL, service TEXT NOT NULL, part_id TEXT NOT NULL, "
        "chunk INTEGER NOT NULL, chunks INTEGER NOT NULL, sealed TEXT NOT NULL, "
        f"received_at {ts} NOT NULL DEFAULT {now}, "
        "PRIMARY KEY (export_id, service, part_id, chunk))",
        f"CREATE INDEX IF NOT EXISTS data_export_chunks_account ON {chunks} (account_id)",
        f"CREATE TABLE IF NOT EXISTS {exports} (export_id {ident} PRIMARY KEY, "
        f"account_id {ident} NOT NULL, status TEXT NOT NULL, "
        f"requested_at {ts} NOT NULL, due_at {ts} NOT NULL, expires_at {ts} NOT NULL, "
        f"updated_at {ts} NOT NULL DEFAULT {now})",
        f"CREATE INDEX IF NOT EXISTS data_exports_account ON {exports} (account_id)",
        f"CREATE INDEX IF NOT EXISTS data_exports_status ON {exports} (status, due_at)",
    ]
    for statement in statements:
        cursor.execute(statement)
    ending = (event_names.WITHDRAWAL_REQUESTED, event_names.PURGED)
    when = " OR ".join(f"NEW.topic = '{topic}'" for topic in ending)
    triggers = db.dialect.pick(postgres=_end_data_exports_postgres, sqlite=_end_data_exports_sqlite)
    triggers(cursor, db, when, keys, chunks)


def _end_data_exports_sqlite(
    cursor: Cursor, db: Database, when: str, keys: str, chunks: str
) -> None:
    cursor.execute(
        "CREATE TRIGGER IF NOT EXISTS end_data_exports "
        f"AFTER INSERT ON {db.events_table} WHEN {when} BEGIN "
        f"DELETE FROM {keys} WHERE account_id = NEW.originator_id; "
        f"DELETE FROM {chunks} WHERE account_id = NEW.originator_id; END"
    )


def _end_data_exports_postgres(
    cursor: Cursor, db: Database, when: str, keys: str, chunks: str
) -> None:
    function = db.table("end_data_exports")
    cursor.execute(
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN "
        f"DELETE FROM {keys} WHERE account_id = NEW.originator_id; "
        f"DELETE FROM {chunks} WHERE account_id = NEW.originator_id; RETURN NULL; END $$"
    )
    if "end_data_exports" not in triggers_in(cursor, db):
        cursor.execute(
            f"CREATE TRIGGER end_data_exports AFTER INSERT ON {db.events_table} "
            f"FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION {function}()"
        )


def _data_export_failures(cursor: Cursor, db: Database) -> None:
    """The services whose part failed, on each status row (ops' failed list and metric)."""
    cursor.execute(
        f"ALTER TABLE {db.table(EXPORTS)} ADD COLUMN failed_services TEXT NOT NULL DEFAULT ''"
    )


DATA_EXPORT = Component(
    DATA_EXPORT_COMPONENT,
    (
        Migration(1, "data exports: keys, sealed parts, status rows", _data_export_tables),
        Migration(2, "data exports: failed services on the status rows", _data_export_failures),
    ),
)
