"""The in-doubt tests' proxy (`tests/pg_proxy.py`) cuts a write that has no BEGIN/COMMIT: one
statement on an autocommit connection, committed at its Sync. The event store writes that way
(`PostgresKeyRecorder.insert_once`), and a prepared statement's text is on the wire only once,
so the proxy must know it by name when it is executed again."""

from __future__ import annotations

from urllib.parse import urlsplit

import psycopg
import pytest
from pg_proxy import CommitCuttingProxy


def stored(postgres_url: str, table: str) -> int:
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(("cut", "rows_after"), [("after_commit", 2), ("before_commit", 1)])
def test_a_prepared_statement_in_an_implicit_transaction_is_cut_around_its_commit(
    postgres_url: str, pg_schema: str, cut: str, rows_after: int
) -> None:
    table = f"{pg_schema}.proxied_writes"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (n integer)")
    port = urlsplit(postgres_url).port or 5432
    insert = f"INSERT INTO {table} VALUES (%s)"
    with (
        CommitCuttingProxy(port, write_markers=[b"INSERT INTO"]) as proxy,
        psycopg.connect(proxy.url(postgres_url), autocommit=True) as conn,
    ):
        conn.execute(insert, (1,), prepare=True)  # unarmed: passes, and is now prepared
        conn.execute("SELECT 1")  # armed or not, a read is never cut
        getattr(proxy, f"cut_{cut}")()
        conn.execute("SELECT 1")
        assert proxy.cuts == 0
        with pytest.raises(psycopg.OperationalError):
            conn.execute(insert, (2,), prepare=True)  # a Bind naming the prepared insert
        assert proxy.cuts == 1
    assert stored(postgres_url, table) == rows_after
