"""`ElectedWorkers`: of several serving processes, exactly one runs the in-process workers;
when it stops, a standby takes over. On SQLite (a file lock) and PostgreSQL (advisory lock)."""

from __future__ import annotations

from support import wait_until

from lifecycle.application import Accounts
from lifecycle.bootstrap import build_erasure
from lifecycle.settings import Settings
from lifecycle.workers import ElectedWorkers


def test_one_of_two_runs_the_workers_and_the_other_takes_over(
    settings: Settings, accounts: Accounts
) -> None:
    erasure = build_erasure(accounts, settings)
    first = ElectedWorkers(settings, accounts, erasure, retry_s=0.05).start()
    second = ElectedWorkers(settings, accounts, erasure, retry_s=0.05).start()
    try:
        assert first.active
        assert not second.active
        assert first.workers is not None
        names = (
            "relay",
            "scout",
            "chat",
            "mail",
            "lifecycle-erasure",
            "lifecycle-export",
            "data-export-sweep",
        )
        assert sorted(first.workers.running) == sorted(f"worker-{name}" for name in names)

        first.stop()

        wait_until(lambda: second.active, "the standby takes over")
        assert second.workers is not None
        assert len(second.workers.running) == len(names)
    finally:
        first.stop()
        second.stop()
    assert second.workers is None


def test_with_kafka_configured_nothing_is_elected(settings: Settings, accounts: Accounts) -> None:
    with_kafka = settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:9"})
    elected = ElectedWorkers(with_kafka, accounts, build_erasure(accounts, settings)).start()
    assert not elected.active
    elected.stop()
