"""The event log at the service layer: export between bounds (a bad bound refused as a bad
command, before anything is written), replay and verify with their progress."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from lifecycle.application import Accounts
from lifecycle.audit import replay as replay_module
from lifecycle.audit.replay_report import ReplayReport
from lifecycle.errors import InvalidCommandError, ReplayFailedError
from lifecycle.services.event_log import ONE_PASS_POOL_SIZE, EventLog, one_pass
from lifecycle.settings import Settings
from lifecycle.stored_fold import IdRange
from projections.hashchain import HashChain
from projections.runner import Projector


def registered(accounts: Accounts, n: int) -> None:
    for i in range(n):
        accounts.register(
            email=f"log-{i}@event-log.example", display_name="Mirabel", consent_version="v1"
        )


def test_export_writes_what_lies_between_the_bounds_as_stored(accounts: Accounts) -> None:
    registered(accounts, 3)
    out = io.StringIO()
    progress: list[tuple[int, int]] = []

    written = EventLog(accounts, lambda done, total: progress.append((done, total))).export(
        out, since="2", until="3"
    )

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert written == len(lines) == 2
    assert [line["notification_id"] for line in lines] == [2, 3]
    assert "Mirabel" not in out.getvalue()  # personal fields stay sealed
    total = accounts.recorder.max_notification_id()
    assert progress[-1] == (total, total)


def test_export_refuses_a_bound_that_is_neither_an_id_nor_a_date(accounts: Accounts) -> None:
    out = io.StringIO()
    with pytest.raises(InvalidCommandError):
        EventLog(accounts).export(out, since="last week")
    assert out.getvalue() == ""


def test_replay_refuses_fewer_than_one_worker(accounts: Accounts) -> None:
    with pytest.raises(InvalidCommandError):
        EventLog(accounts).replay(workers=0)


def test_a_worker_that_fails_fails_the_replay_with_its_error(
    accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered(accounts, 2)
    folds = replay_module._replay_ids

    def failing_in_a_child(accounts: Accounts, ids: IdRange, *args: Any) -> ReplayReport:
        if ids[0] is not None:  # not the caller's own range
            raise RuntimeError("the database went away")
        return folds(accounts, ids, *args)

    monkeypatch.setattr(replay_module, "_replay_ids", failing_in_a_child)
    log = EventLog(accounts)
    if not accounts.database.dialect.shared_by_processes:
        assert log.replay(workers=2).ok  # SQLite: one process, nothing forked
        return
    with pytest.raises(ReplayFailedError) as failed:
        log.replay(workers=2)
    assert failed.value.detail == "replay failed: part-1: RuntimeError: the database went away"


def test_replay_and_verify_pass_on_a_clean_log(accounts: Accounts) -> None:
    registered(accounts, 2)
    Projector(accounts, HashChain(accounts.database)).catch_up()
    progress: list[tuple[int, int]] = []
    log = EventLog(accounts, lambda done, total: progress.append((done, total)))

    assert log.replay().ok
    verification = log.verify()

    assert verification.ok and verification.mismatches == 0
    total = accounts.recorder.max_notification_id()
    assert progress[-1] == (total, total)


def test_a_pass_over_the_log_opens_a_small_pool(settings: Settings) -> None:
    assert one_pass(settings.model_copy(update={"database_pool_size": 1})).database_pool_size == 1
    big = settings.model_copy(update={"database_pool_size": 10})
    assert one_pass(big) == big.model_copy(update={"database_pool_size": ONE_PASS_POOL_SIZE})
