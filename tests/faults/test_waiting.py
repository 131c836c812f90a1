"""The relay and the projections wait out a dependency that is down: `waiting_for` names it
(readiness reads it), one log line says why, and they go on by themselves when it returns."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import OperationalError
from structlog.testing import capture_logs
from support import wait_until

from lifecycle.application import Accounts
from lifecycle.bootstrap import migrate_lifecycle
from lifecycle.crypto import new_master_key
from lifecycle.kafka.inprocess import InProcessPublisher
from lifecycle.kafka.producer import PublishError
from lifecycle.relay import Relay
from lifecycle.settings import Settings
from projections.registry import open_read_models
from projections.runner import Projector


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[Accounts]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'lifecycle.sqlite3'}", master_key=new_master_key()
    )
    migrate_lifecycle(settings)
    app = Accounts(env=settings.application_env())
    yield app
    app.close()


def register(accounts: Accounts, n: int) -> None:
    for i in range(n):
        accounts.register(
            email=f"waiting.{i}@example.jp", display_name=f"Waiting {i}", consent_version="2026-04"
        )


class Outage:
    """Makes a callable fail as a dependency that is down would, until `end()`."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.down = threading.Event()
        self.down.set()
        self.failures = 0

    def wrap(self, work: Any) -> Any:
        def failing(*args: Any, **kwargs: Any) -> Any:
            if self.down.is_set():
                self.failures += 1
                raise self.error
            return work(*args, **kwargs)

        return failing

    def end(self) -> None:
        self.down.clear()


@pytest.mark.parametrize(
    ("error", "dependency", "event"),
    [
        (PublishError("NoBrokersAvailable"), "broker", "relay.kafka_unreachable"),
        (OperationalError("connection lost"), "database", "relay.database_unreachable"),
    ],
)
def test_the_relay_waits_for_a_dependency_and_goes_on(
    accounts: Accounts, error: Exception, dependency: str, event: str
) -> None:
    register(accounts, 3)
    publisher = InProcessPublisher()
    outage = Outage(error)
    if dependency == "broker":
        publisher.flush = outage.wrap(publisher.flush)  # type: ignore[method-assign]
    relay = Relay(accounts, publisher, poll_interval_s=0.05, initial_backoff_s=0.02)
    if dependency == "database":
        select = accounts.recorder.select_notifications
        accounts.recorder.select_notifications = outage.wrap(select)  # type: ignore[method-assign]
    stop = threading.Event()
    with capture_logs() as logs:
        runner = threading.Thread(target=relay.run, args=(stop,))
        runner.start()
        try:
            wait_until(lambda: outage.failures >= 3, "the relay retried")
            assert relay.waiting_for == dependency
            outage.end()
            head = accounts.recorder.max_notification_id()
            wait_until(lambda: relay.position == head and relay.waiting_for is None, "caught up")
        finally:
            stop.set()
            runner.join(timeout=10)
    waiting = [line for line in logs if line["event"] == event]
    assert waiting and all(line["dependency"] == dependency for line in waiting)
    assert all(line["log_level"] == "warning" for line in waiting)
    assert [line["dependency"] for line in logs if line["event"] == "relay.recovered"] == [
        dependency
    ]
    assert not [line for line in logs if line["event"] == "relay.failed"]


def test_a_projection_waits_for_the_database_and_goes_on(accounts: Accounts) -> None:
    register(accounts, 3)
    (model,) = open_read_models(accounts.database, ["account_directory"])
    projector = Projector(accounts, model)
    outage = Outage(OperationalError("server closed the connection"))
    select = accounts.recorder.select_notifications
    accounts.recorder.select_notifications = outage.wrap(select)  # type: ignore[method-assign]
    stop = threading.Event()
    with capture_logs() as logs:
        runner = threading.Thread(target=projector.run, args=(stop, 0.05))
        runner.start()
        try:
            wait_until(lambda: outage.failures >= 2, "the projector retried")
            assert projector.waiting_for == "database"
            outage.end()
            head = accounts.recorder.max_notification_id()
            wait_until(lambda: projector.position == head and projector.waiting_for is None)
        finally:
            stop.set()
            runner.join(timeout=10)
    assert any(line["event"] == "projection.waiting" for line in logs)
    assert [line["event"] for line in logs if line["event"] == "projection.recovered"] == [
        "projection.recovered"
    ]
    assert not [line for line in logs if line["event"] == "projection.failed"]
