"""The database layer's dialects (lifecycle.storage.dialects), on SQLite and PostgreSQL alike:
what code above the layer asks of them behaves the same on both, and nothing above the layer
asks which backend it runs on."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from uuid import uuid4

import pytest

from consumers.store import ConsumerStore
from lifecycle.application import Accounts
from lifecycle.bootstrap import ERASURE_TABLE_PREFIX
from lifecycle.storage import Database, read_timestamp

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(accounts: Accounts) -> Iterator[Database]:
    database = accounts.database
    with database.ddl() as cursor:
        cursor.execute(
            f"CREATE TABLE {database.table('dialect_probe')} (account_id {database.id_type} "
            f"PRIMARY KEY, label TEXT NOT NULL, at {database.timestamp_type})"
        )
    yield database
    with database.ddl() as cursor:
        cursor.execute(f"DROP TABLE {database.table('dialect_probe')}")


def test_a_timestamp_reads_back_as_the_aware_utc_moment_it_was(db: Database) -> None:
    moment = datetime(2026, 4, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=9)))
    table = db.table("dialect_probe")
    with db.transaction() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (account_id, label, at) VALUES (%s, %s, %s)",
            (db.id_param(uuid4()), "a", db.dialect.timestamp(moment)),
        )
        cursor.execute(
            f"INSERT INTO {table} (account_id, label, at) VALUES (%s, %s, {db.now})",
            (db.id_param(uuid4()), "b"),
        )
    with db.transaction(commit=False) as cursor:
        rows = dict(cursor.execute(f"SELECT label, at FROM {table}").fetchall())
    stored = read_timestamp(rows["a"])
    assert stored == moment and stored is not None and stored.utcoffset() == timedelta(0)
    by_database = read_timestamp(rows["b"])  # the database's own clock: naive text on SQLite
    assert by_database is not None and by_database.tzinfo is not None
    assert abs(by_database - datetime.now(UTC)) < timedelta(minutes=5)
    assert read_timestamp(None) is None


def test_rows_insert_many_and_update_many_in_one_statement_each(db: Database) -> None:
    table = db.table("dialect_probe")
    ids = [uuid4() for _ in range(4)]
    columns = [("account_id", db.id_type), ("label", "text")]
    source, params = db.dialect.rows(columns, [(db.id_param(i), "old") for i in ids])
    with db.transaction() as cursor:
        cursor.execute(f"INSERT INTO {table} (account_id, label) {source}", params)
    changes = [(db.id_param(ids[0]), "new"), (db.id_param(ids[2]), "new")]
    values, params = db.dialect.rows(columns, changes)
    with db.transaction() as cursor:
        updated = cursor.execute(
            f"UPDATE {table} AS t SET label = v.label FROM ({values}) AS v "
            "WHERE t.account_id = v.account_id",
            params,
        ).rowcount
    assert updated == 2
    condition, params = db.any_of("account_id", [db.id_param(i) for i in ids[:3]])
    with db.transaction(commit=False) as cursor:
        found = cursor.execute(
            f"SELECT label FROM {table} WHERE {condition} ORDER BY label", params
        ).fetchall()
    assert [label for (label,) in found] == ["new", "new", "old"]


def test_a_moment_compares_with_what_now_wrote_to_the_second(db: Database) -> None:
    table = db.table("dialect_probe")
    with db.transaction() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (account_id, label, at) VALUES (%s, %s, {db.now})",
            (db.id_param(uuid4()), "now"),
        )
    now = datetime.now(UTC)

    def older_than(moment: datetime) -> int:
        with db.transaction(commit=False) as cursor:
            statement = f"SELECT count(*) FROM {table} WHERE at < %s"
            row = cursor.execute(statement, (db.dialect.as_now_writes(moment),)).fetchone()
        return int(row[0]) if row else -1

    # Seconds apart, on either side: the same day's text must not compare by its layout.
    assert older_than(now - timedelta(seconds=30)) == 0
    assert older_than(now + timedelta(seconds=30)) == 1


def test_the_kit_forgets_only_marks_older_than_the_cutoff(db: Database) -> None:
    store = ConsumerStore(db, table_prefix=ERASURE_TABLE_PREFIX)  # the erasure kit's marks
    with store.transaction() as cursor:
        store.mark_all_processed(cursor, ["probe-a", "probe-b"])
    assert store.forget_processed(datetime.now(UTC) - timedelta(seconds=30)) == 0
    assert store.forget_processed(datetime.now(UTC) + timedelta(seconds=30)) == 2


def test_tables_are_found_by_bare_name_in_the_databases_schema(db: Database) -> None:
    assert db.table_exists("dialect_probe")
    assert not db.table_exists("no_such_table")
    assert {"dialect_probe", "account_keys"} <= db.table_names()


def test_key_locks_take_any_number_of_keys(db: Database) -> None:
    with db.transaction() as cursor:
        db.dialect.lock_keys(cursor, [])
        db.dialect.lock_keys(cursor, ["b", "a", "a"])
        db.dialect.lock_key(cursor, "c")


def test_no_code_above_the_database_layer_asks_which_backend_it_runs_on() -> None:
    asking = re.compile(r"dialect(\.name)?\s*[!=]=|== \"(postgres|sqlite)\"")
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in ("lifecycle", "consumers", "projections")
        for path in sorted((ROOT / package).rglob("*.py"))
        if "storage" not in path.relative_to(ROOT).parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if asking.search(line)
    ]
    assert found == []


def test_rows_of_several_tables_deleted_at_once_counting_the_first_tables(db: Database) -> None:
    probe, other = db.table("dialect_probe"), db.table("dialect_probe_keys")
    ids = [uuid4() for _ in range(3)]
    with db.ddl() as cursor:
        cursor.execute(f"CREATE TABLE {other} (account_id {db.id_type} NOT NULL)")
    try:
        with db.transaction() as cursor:
            for account in ids:
                cursor.execute(
                    f"INSERT INTO {probe} (account_id, label) VALUES (%s, 'x')",
                    (db.id_param(account),),
                )
                for _ in range(2):
                    cursor.execute(
                        f"INSERT INTO {other} (account_id) VALUES (%s)", (db.id_param(account),)
                    )
        where, params = db.any_of("account_id", [db.id_param(a) for a in ids[:2]])
        with db.transaction() as cursor:
            counted = db.dialect.delete_accounts(cursor, [probe, other], where, params, 1)
            uncounted = db.dialect.delete_accounts(cursor, [other], where, params, 0)
        assert sorted(db.to_uuid(a) for a in counted) == sorted(ids[:2])
        assert uncounted == []
        with db.transaction(commit=False) as cursor:
            left = [
                cursor.execute(f"SELECT account_id FROM {table}").fetchall()
                for table in (probe, other)
            ]
        assert [[db.to_uuid(a) for (a,) in rows] for rows in left] == [[ids[2]], [ids[2]] * 2]
    finally:
        with db.ddl() as cursor:
            cursor.execute(f"DROP TABLE {other}")
