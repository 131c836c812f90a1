"""Following the log live, and rebuilding a read model while writers and its live projector run."""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
from projection_history import History, catch_up, table_rows
from support import MigratedSchemas, race
from typer.testing import CliRunner

from lifecycle.application import Accounts
from lifecycle.cli import cli
from lifecycle.domain import Account
from lifecycle.settings import Settings
from lifecycle.storage import Database
from projections.base import (
    APPLICATION_NAME,
    SHADOW_SUFFIX,
    jst_month,
    jst_week_start,
)
from projections.directory import AccountDirectory
from projections.hashchain import HashChain
from projections.registry import READ_MODELS, UnknownReadModelError, read_model_classes
from projections.runner import Progress, ProgressPrinter, Projector, rebuild
from projections.statistics import GiftClaims, ScoutsPerCompany, WithdrawalReasons

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
    assert not accounts.database.table_exists(model.tracking_table + SHADOW_SUFFIX)
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


# Followers started together


COUNTING = (WithdrawalReasons, GiftClaims, ScoutsPerCompany)
FOLLOWERS = 4
ROUNDS = 5


def write_log(accounts: Accounts, members: int = 30) -> None:
    """Members scouted by overlapping companies, some gifted, some withdrawn (with and
    without forfeiting the gift), saved a few aggregates at a time."""
    saved: list[Account] = []
    for n in range(members):
        member = Account.register(
            email=f"f-{uuid4().hex[:10]}@example.jp", display_name="N", consent_version="1"
        )
        for s in range(1 + n % 3):
            member.receive_scout(
                scout_id=f"s-{s}",
                company_id=f"company-{(n + s) % 4}",
                job_id="j",
                received_at=datetime.now(UTC),
            )
        if n % 3 == 0:
            member.claim_gift(company_id=f"company-{n % 4}", start_date=date(2026, 7, 1))
        if n % 2 == 0:
            reason = ("hired_elsewhere", "too_many_notifications", "other")[n % 3]
            member.request_withdrawal(reason=reason, acknowledge_gift_loss=True)
        saved.append(member)
        if len(saved) == 5:
            accounts.save(*saved)
            saved = []
    accounts.save(*saved)


def counts_from_the_log(accounts: Accounts) -> dict[str, Any]:
    """What the counting read models must hold, computed straight from the events."""
    weekly: Counter[tuple[str, str, str]] = Counter()
    monthly: Counter[tuple[str, str, str]] = Counter()
    scouts: Counter[str] = Counter()
    members: dict[str, set[UUID]] = {}
    for notification in accounts.recorder.select_notifications(start=1, limit=1_000_000):
        event = accounts.mapper.to_domain_event(notification)
        if isinstance(event, Account.WithdrawalRequested):
            week = jst_week_start(event.timestamp)
            weekly[(week, event.reason, "withdrawals")] += 1
            weekly[(week, event.reason, "gifts_forfeited")] += int(event.gift_forfeited)
        elif isinstance(event, Account.GiftClaimed):
            month = jst_month(event.timestamp)
            monthly[(month, event.company_id, "claims")] += 1
            monthly[(month, event.company_id, "amount_jpy")] += event.amount_jpy
        elif isinstance(event, Account.ScoutReceived):
            scouts[event.company_id] += 1
            members.setdefault(event.company_id, set()).add(event.originator_id)
    return {
        "withdrawal_reasons": +weekly,
        "gift_claims": +monthly,
        "scouts_per_company": {
            company: (count, len(members[company])) for company, count in scouts.items()
        },
    }


def counts_in_the_read_models(database: Database) -> dict[str, Any]:
    weekly: Counter[tuple[str, str, str]] = Counter()
    for row in WithdrawalReasons(database).weekly():
        for column in ("withdrawals", "gifts_forfeited"):
            weekly[(row["week_start"], row["reason"], column)] += row[column]
    monthly: Counter[tuple[str, str, str]] = Counter()
    for row in GiftClaims(database).monthly():
        for column in ("claims", "amount_jpy"):
            monthly[(row["month"], row["company_id"], column)] += row[column]
    return {
        "withdrawal_reasons": +weekly,
        "gift_claims": +monthly,
        "scouts_per_company": {
            row["company_id"]: (row["scouts"], row["members"])
            for row in ScoutsPerCompany(database).companies()
        },
    }


def follow(accounts: Accounts) -> int:
    """What a `lifecycle project` follower does first: create the tables, catch up."""
    models = [model_class(accounts.database) for model_class in COUNTING]
    for model in models:
        model.create()
    return sum(Projector(accounts, model, batch_size=4).catch_up() for model in models)


@pytest.mark.parametrize("backend", ["postgres"])
def test_followers_started_together_on_a_fresh_log_count_each_event_once(
    settings: Settings, migrated_schemas: MigratedSchemas
) -> None:
    """`lifecycle project` run as an HA group: every follower opens the counting read models
    (their tables migrated, tracking rows seeded at 0) and follows the log, all released at
    the same instant, before any of them has committed a position. Each round on a schema
    as `lifecycle migrate` leaves it."""
    for _ in range(ROUNDS):
        schema = migrated_schemas.take()
        fresh = settings.model_copy(update={"database_schema": schema})
        writer = Accounts(env=fresh.application_env())
        followers = [Accounts(env=fresh.application_env()) for _ in range(FOLLOWERS)]
        try:
            write_log(writer)

            results = race(lambda i, apps=followers: follow(apps[i]), FOLLOWERS)

            assert not [r for r in results if isinstance(r, BaseException)], results
            assert sum(r for r in results if isinstance(r, int)) >= len(COUNTING)
            assert counts_in_the_read_models(writer.database) == counts_from_the_log(writer)
        finally:
            for app in (writer, *followers):
                app.close()
            migrated_schemas.give_back(schema)


def test_the_cli_takes_the_registry_names() -> None:
    """One name per read model: the registry's, which `lifecycle project --help` lists."""
    result = CliRunner().invoke(cli, ["project", "--help"], env={"COLUMNS": "400"})

    assert result.exit_code == 0
    listed = re.search(r"Projections \(default: all\): ([a-z_, ]+)\.", result.output)
    assert listed is not None, result.output
    assert listed.group(1).split(", ") == list(READ_MODELS)
