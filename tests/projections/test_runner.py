"""Following the log live, and rebuilding a read model while writers and its live projector run."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from uuid import uuid4

import pytest
from projection_history import History, catch_up, table_rows

from lifecycle.application import Accounts
from projections.base import APPLICATION_NAME, SHADOW_SUFFIX, table_exists
from projections.directory import AccountDirectory
from projections.hashchain import HashChain
from projections.registry import READ_MODELS, UnknownReadModelError, read_model_classes
from projections.runner import Progress, ProgressPrinter, Projector, rebuild
from projections.statistics import ScoutsPerCompany

DEADLINE_S = 30.0


def register(accounts: Accounts) -> None:
    account_id = accounts.register(
        email=f"m-{uuid4().hex[:10]}@example.jp", display_name="N", consent_version="1"
    )
    accounts.receive_scout(account_id, scout_id="s", company_id="initech", job_id="j")


def wait_caught_up(accounts: Accounts, model: AccountDirectory | ScoutsPerCompany) -> None:
    """Block until the read model's tracking reaches the log's head (library wait, deadline)."""
    head = accounts.recorder.max_notification_id()
    model.view.wait(APPLICATION_NAME, head, timeout=DEADLINE_S)


@pytest.fixture
def live(accounts: Accounts) -> Iterator[tuple[AccountDirectory, threading.Event]]:
    """A directory projector following the log in a thread, as `lifecycle project` runs it."""
    model = AccountDirectory(accounts.database)
    model.create()
    stop = threading.Event()
    thread = threading.Thread(
        target=Projector(accounts, model, batch_size=7).run,
        args=(stop,),
        kwargs={"poll_interval_s": 0.05},
    )
    thread.start()
    yield model, stop
    stop.set()
    thread.join(timeout=DEADLINE_S)
    assert not thread.is_alive()


def test_a_running_projector_follows_new_events(
    accounts: Accounts, live: tuple[AccountDirectory, threading.Event]
) -> None:
    model, _ = live
    register(accounts)
    wait_caught_up(accounts, model)
    assert model.counts_by_status()["active"] == 1

    register(accounts)
    wait_caught_up(accounts, model)

    assert model.counts_by_status()["active"] == 2


def test_rebuild_while_writers_and_the_live_projector_run(
    accounts: Accounts, history: History, live: tuple[AccountDirectory, threading.Event]
) -> None:
    model, _ = live
    for _ in range(20):
        register(accounts)
    stop_writing = threading.Event()
    written = threading.Event()

    def keep_writing() -> None:
        while not stop_writing.is_set():
            register(accounts)
            written.set()

    writer = threading.Thread(target=keep_writing)
    writer.start()
    reports: list[Progress] = []
    try:
        assert written.wait(DEADLINE_S)
        result = rebuild(accounts, AccountDirectory, batch_size=5, progress=reports.append)
    finally:
        stop_writing.set()
        writer.join(timeout=DEADLINE_S)
    wait_caught_up(accounts, model)

    # Exactly the rows a fresh replay of the whole log gives: nothing lost, nothing twice.
    fresh = AccountDirectory(accounts.database, suffix="__fresh")
    catch_up(accounts, fresh)
    table = model.table("account_directory")
    assert table_rows(accounts.database, table, "account_id") == table_rows(
        accounts.database, fresh.table("account_directory"), "account_id"
    )
    assert model.position() == fresh.position() == accounts.recorder.max_notification_id()
    assert not table_exists(accounts.database, model.tracking_table + SHADOW_SUFFIX)
    assert result.events >= reports[-1].done > 0
    assert reports[-1].finished and reports[-1].done == reports[-1].total
    assert all(report.rate > 0 for report in reports)


def test_rebuild_keeps_indexes_usable_for_the_next_rebuild(
    accounts: Accounts, history: History
) -> None:
    model = AccountDirectory(accounts.database)
    catch_up(accounts, model)
    before = model.page(limit=10)

    rebuild(accounts, AccountDirectory)
    rebuild(accounts, AccountDirectory)

    assert model.page(limit=10) == before
    assert model.page(status="purged") == [row for row in before if row["status"] == "purged"]


def test_rebuild_of_a_read_model_never_run_creates_it(accounts: Accounts, history: History) -> None:
    result = rebuild(accounts, ScoutsPerCompany)

    assert result.position == accounts.recorder.max_notification_id()
    assert {row["company_id"] for row in ScoutsPerCompany(accounts.database).companies()} == {
        "acme",
        "globex",
    }


def test_progress_line_has_done_total_rate_and_eta() -> None:
    progress = Progress("directory", start_position=0, total=200, done=50, position=50)
    lines: list[str] = []
    printer = ProgressPrinter(lines.append, interval_s=3600)

    printer(progress)
    printer(progress)  # within the interval: not printed again
    progress.done, progress.finished = 200, True
    printer(progress)  # the end always is

    assert len(lines) == 2
    assert lines[0].startswith("directory: 50/200 events (25.0%), ")
    assert "events/s, ETA " in lines[0]
    assert "200/200 events (100.0%)" in lines[1] and "done" in lines[1]


def test_names_select_read_models() -> None:
    assert read_model_classes(["hash_chain"]) == [HashChain]
    assert read_model_classes() == list(READ_MODELS.values())
    with pytest.raises(UnknownReadModelError):
        read_model_classes(["nope"])
