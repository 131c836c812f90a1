"""Processes that start together on one fresh schema must all come up."""

from __future__ import annotations

import threading

from lifecycle.bootstrap import build_accounts
from lifecycle.crypto import new_master_key
from lifecycle.settings import Settings


def test_concurrent_starts_on_a_fresh_schema_all_succeed(postgres_url: str, pg_schema: str) -> None:
    settings = Settings(
        database_url=postgres_url, database_schema=pg_schema, master_key=new_master_key()
    )
    starters = 8
    barrier = threading.Barrier(starters, timeout=60)
    failures: list[BaseException] = []
    started = []

    def start() -> None:
        barrier.wait()
        try:
            started.append(build_accounts(settings))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for accounts in started:
        accounts.close()
    assert failures == []
    assert len(started) == starters
