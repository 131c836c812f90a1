"""An erasure's cleanup the engine cannot do at once is owed and done soon after
(lifecycle/storage/cleanup.py), not left for the next erasure to come along."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from support import wait_until

from lifecycle.storage import Database

NEEDLE = b"needle-0f-a-destroyed-key"


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = Database.open(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    with database.transaction() as cursor:
        cursor.execute("CREATE TABLE keys (id INTEGER PRIMARY KEY, wrapped BLOB)")
    yield database
    database.close()


def test_a_checkpoint_a_reader_blocked_is_owed_and_done_once_the_reader_leaves(
    sqlite_db: Database, tmp_path: Path
) -> None:
    wal = tmp_path / "store.sqlite3-wal"
    with sqlite_db.transaction() as cursor:
        cursor.execute("INSERT INTO keys (id, wrapped) VALUES (1, %s)", (NEEDLE,))
    with sqlite_db.transaction() as cursor:
        cursor.execute("DELETE FROM keys WHERE id = 1")
    reader = sqlite3.connect(tmp_path / "store.sqlite3", isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM keys").fetchone()  # a snapshot in the WAL

        sqlite_db.after_erasure(["keys"])

        assert sqlite_db.cleanup.owed == {"keys"}
        assert NEEDLE in wal.read_bytes()  # the page image before the delete
    finally:
        reader.execute("COMMIT")
        reader.close()
    wait_until(lambda: not sqlite_db.cleanup.owed, "the owed checkpoint done", timeout_s=10)
    assert NEEDLE not in wal.read_bytes()
    assert NEEDLE not in (tmp_path / "store.sqlite3").read_bytes()  # secure_delete zeroed it


@pytest.mark.postgres
def test_a_vacuum_too_soon_after_the_last_is_owed_and_run_after_the_interval(
    postgres_url: str, pg_schema: str
) -> None:
    database = Database.open(postgres_url, pg_schema)
    try:
        with database.transaction() as cursor:
            cursor.execute(f"CREATE TABLE {pg_schema}.keys (id int PRIMARY KEY)")

        database.after_erasure(["keys"])
        database.after_erasure(["keys"])  # within the dialect's once-a-second

        assert database.cleanup.owed == {"keys"}
        wait_until(lambda: not database.cleanup.owed, "the owed vacuum run", timeout_s=10)
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT vacuum_count FROM pg_stat_user_tables"
                " WHERE schemaname = %s AND relname = 'keys'",
                (pg_schema,),
            ).fetchone()
        assert row == (2,)
    finally:
        database.close()
