"""Each read model replays a known history into the expected rows, on SQLite and PostgreSQL,
and a duplicate delivery changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from eventsourcing.persistence import IntegrityError, Tracking
from projection_history import (
    COMMENT,
    PERSONAL,
    History,
    account,
    catch_up,
    table_rows,
)

from lifecycle.application import Accounts
from lifecycle.domain import Account
from lifecycle.erasure.process import Confirmation, ErasureProcess
from lifecycle.erasure.queries import ErasureStatusQuery
from lifecycle.erasure.status import FAILED
from projections.base import (
    APPLICATION_NAME,
    Item,
    PositionMovedError,
    ReadModel,
    facts_mapper,
    jst_month,
    jst_week_start,
)
from projections.directory import AccountDirectory
from projections.erasure import ErasureQuery, ErasureStatusView
from projections.registry import READ_MODELS
from projections.runner import Projector
from projections.statistics import GiftClaims, ScoutsPerCompany, WithdrawalReasons


def test_account_directory_has_status_and_dates(accounts: Accounts, history: History) -> None:
    directory = AccountDirectory(accounts.database)
    catch_up(accounts, directory)

    rows = {row["account_id"]: row for row in directory.page(limit=10)}

    assert set(rows) == set(history.all())
    active, purged = account(accounts, history.active), account(accounts, history.purged)
    withdrawing = account(accounts, history.withdrawing)
    assert rows[history.active] == {
        "account_id": history.active,
        "status": "active",
        "registered_at": active.registered_at,
        "channel": "app",
        "consent_version": "2026-04",
        "version": active.version,
        "updated_at": active.modified_on,
        "scouts_received": 2,
        "gift_claimed_at": None,
        "withdrawn_at": None,
        "withdrawal_reason": None,
        "purged_at": None,
    }
    assert rows[history.purged] | {"account_id": None} == {
        "account_id": None,
        "status": "purged",
        "registered_at": purged.registered_at,
        "channel": "web",
        "consent_version": "2026-04",
        "version": purged.version,
        "updated_at": purged.purged_at,
        "scouts_received": 1,
        "gift_claimed_at": purged.gift["claimed_at"] if purged.gift else "missing",
        "withdrawn_at": purged.withdrawn_at,
        "withdrawal_reason": "hired_via_platform",
        "purged_at": purged.purged_at,
    }
    assert rows[history.withdrawing]["status"] == "withdrawing"
    assert rows[history.withdrawing]["withdrawn_at"] == withdrawing.withdrawn_at
    assert rows[history.quiet]["scouts_received"] == 0
    assert directory.counts_by_status() == {"active": 2, "withdrawing": 1, "purged": 1}
    assert [r["account_id"] for r in directory.page(status="withdrawing")] == [history.withdrawing]


def test_account_directory_pages_by_id(accounts: Accounts, history: History) -> None:
    directory = AccountDirectory(accounts.database)
    catch_up(accounts, directory)

    first = directory.page(limit=3)
    rest = directory.page(after=first[-1]["account_id"], limit=3)

    assert len(first) == 3
    assert [r["account_id"] for r in first + rest] == sorted(
        history.all(), key=lambda i: i if accounts.database.dialect.name == "postgres" else i.hex
    )


def test_erasure_status_per_account_and_service(accounts: Accounts, history: History) -> None:
    model = ErasureStatusView(accounts.database)
    catch_up(accounts, model)
    process = ErasureProcess(accounts)
    process.handle(Confirmation(history.withdrawing, "scout", "confirmed", 3, "c-1"))
    process.handle(Confirmation(history.withdrawing, "chat", FAILED, 0, "c-2", "timeout"))
    query = ErasureQuery(model, timedelta(hours=72))
    withdrawing = account(accounts, history.withdrawing)
    purged = account(accounts, history.purged)

    found_pending = query.get(history.withdrawing)
    found_done = query.get(history.purged)
    assert found_pending is not None and found_done is not None
    # One status: the read model's is the one the member route reads from the event store.
    from_events = ErasureStatusQuery(accounts, timedelta(hours=72))
    now = datetime.now(UTC)
    for account_id in (history.withdrawing, history.purged):
        assert query.get(account_id, now) == from_events.status(account_id, now)
    pending, done = found_pending.as_dict(), found_done.as_dict()

    assert (
        table_rows(accounts.database, model.table("erasure_requests"), "requested_at")
        == [
            (
                accounts.database.id_param(history.purged),
                model.ts(purged.withdrawn_at),
                "hired_via_platform",
                model.ts(purged.purged_at),
            ),
            (
                accounts.database.id_param(history.withdrawing),
                model.ts(withdrawing.withdrawn_at),
                "too_many_notifications",
                None,
            ),
        ]
        or accounts.database.dialect.name == "sqlite"
    )
    assert pending["state"] == "requested"
    assert pending["requested_at"] == withdrawing.withdrawn_at
    assert pending["deadline_at"] == withdrawing.withdrawn_at + timedelta(hours=72)
    assert pending["overdue"] is False
    assert pending["errored"] is True
    assert {name: s["state"] for name, s in pending["services"].items()} == {
        "scout": "confirmed",
        "chat": "failed",
        "mail": "pending",
    }
    assert pending["services"]["chat"]["error_code"] == "timeout"
    assert done["state"] == "purged"
    assert done["purged_at"] == purged.purged_at
    assert query.get(history.active) is None


def test_erasure_overdue_and_filters(accounts: Accounts, history: History) -> None:
    model = ErasureStatusView(accounts.database)
    catch_up(accounts, model)
    query = ErasureQuery(model, timedelta(hours=72))
    later = datetime.now(UTC) + timedelta(hours=73)

    def ids(state: str, now: datetime | None = None) -> list[object]:
        return [row.account_id for row in query.page(state, now=now)]

    assert ids("open") == [history.withdrawing]
    assert ids("pending") == [history.withdrawing]
    assert ids("overdue") == []
    assert ids("overdue", later) == [history.withdrawing]
    assert ids("pending", later) == []
    assert ids("purged") == [history.purged]
    assert ids("errored") == []
    assert query.page("open", now=later)[0].overdue is True
    assert query.counts(later) == {"open": 1, "errored": 0, "overdue": 1, "purged": 1}


def test_withdrawal_reasons_per_week(accounts: Accounts, history: History) -> None:
    model = WithdrawalReasons(accounts.database)
    catch_up(accounts, model)
    purged_at = account(accounts, history.purged).withdrawn_at
    withdrawing_at = account(accounts, history.withdrawing).withdrawn_at
    assert purged_at is not None and withdrawing_at is not None

    assert sorted(model.weekly(), key=lambda row: row["reason"]) == [
        {
            "week_start": jst_week_start(purged_at),
            "reason": "hired_via_platform",
            "withdrawals": 1,
            "gifts_forfeited": 0,
        },
        {
            "week_start": jst_week_start(withdrawing_at),
            "reason": "too_many_notifications",
            "withdrawals": 1,
            "gifts_forfeited": 1,
        },
    ]
    assert model.weekly(since="2000-01-03", until="2000-01-10") == []


def test_week_and_month_are_japan_time() -> None:
    sunday_night_utc = datetime(2026, 6, 7, 16, 0, tzinfo=UTC)  # Monday 01:00 JST

    assert jst_week_start(sunday_night_utc) == "2026-06-08"
    assert jst_month(datetime(2026, 6, 30, 15, 30, tzinfo=UTC)) == "2026-07"


def test_gift_claims_per_month_and_company(accounts: Accounts, history: History) -> None:
    model = GiftClaims(accounts.database)
    catch_up(accounts, model)
    gift = account(accounts, history.purged).gift
    assert gift is not None

    assert model.monthly() == [
        {
            "month": jst_month(gift["claimed_at"]),
            "company_id": "acme",
            "claims": 1,
            "amount_jpy": 5000,
        }
    ]


def test_scouts_per_company(accounts: Accounts, history: History) -> None:
    model = ScoutsPerCompany(accounts.database)
    catch_up(accounts, model)

    rows = {row["company_id"]: row for row in model.companies()}

    assert {name: (r["scouts"], r["members"]) for name, r in rows.items()} == {
        "acme": (3, 3),
        "globex": (1, 1),
    }
    assert rows["acme"]["first_scout_at"] <= rows["acme"]["last_scout_at"]


def test_a_second_scout_from_one_company_counts_one_member(
    accounts: Accounts, history: History
) -> None:
    accounts.receive_scout(history.active, scout_id="s-9", company_id="acme", job_id="j-9")
    model = ScoutsPerCompany(accounts.database)
    catch_up(accounts, model)

    acme = next(row for row in model.companies() if row["company_id"] == "acme")

    assert (acme["scouts"], acme["members"]) == (4, 3)


def every_table(accounts: Accounts, model: ReadModel) -> list[list[tuple[object, ...]]]:
    # Whole rows in order: rows that tie on a key column come back in the order they lie in.
    return [
        sorted(table_rows(accounts.database, table, "1"), key=repr)
        for table in model.physical_tables[:-1]  # the last is the tracking table
    ]


@pytest.mark.parametrize("name", list(READ_MODELS))
def test_a_duplicate_delivery_changes_nothing(
    accounts: Accounts, history: History, name: str
) -> None:
    model = READ_MODELS[name](accounts.database)
    model.create()
    mapper = facts_mapper(accounts.mapper)
    batch = accounts.recorder.select_notifications(start=1, limit=1000)
    items = [Item(n, mapper.to_domain_event(n) if n.topic in model.topics else None) for n in batch]
    last = Tracking(APPLICATION_NAME, batch[-1].id)
    model.record(items, last, expected_position=0)
    before = every_table(accounts, model)

    # The same batch again, as a runner that did not see the first commit would send it.
    with pytest.raises(PositionMovedError):
        model.record(items, last, expected_position=0)
    # And as a runner that reloaded the position but got the same records again.
    with pytest.raises(IntegrityError):
        model.record(items, last, expected_position=batch[-1].id)
    # Through the projector: nothing new after the position.
    assert Projector(accounts, model).catch_up() == 0

    assert every_table(accounts, model) == before
    assert model.position() == batch[-1].id


@pytest.mark.parametrize("name", list(READ_MODELS))
def test_small_batches_give_the_same_rows_as_one_batch(
    accounts: Accounts, history: History, name: str
) -> None:
    whole = READ_MODELS[name](accounts.database)
    in_pieces = READ_MODELS[name](accounts.database, suffix="__pieces")
    catch_up(accounts, whole, batch_size=1000)
    catch_up(accounts, in_pieces, batch_size=1)

    assert every_table(accounts, in_pieces) == every_table(accounts, whole)
    assert in_pieces.position() == whole.position() == accounts.recorder.max_notification_id()


def test_read_models_hold_no_personal_values(accounts: Accounts, history: History) -> None:
    models = [model_class(accounts.database) for model_class in READ_MODELS.values()]
    for model in models:
        catch_up(accounts, model)

    dumped = repr([every_table(accounts, model) for model in models])

    for value in [*history.emails, COMMENT, PERSONAL["display_name"], PERSONAL["phone"]]:
        assert value not in dumped
    assert "Quantum" not in dumped and "Zanzibar" not in dumped


def test_facts_mapper_redacts_without_the_vault(accounts: Accounts, history: History) -> None:
    stored = accounts.recorder.select_events(history.active)
    event = facts_mapper(accounts.mapper).to_domain_event(stored[0])

    assert isinstance(event, Account.Registered)
    assert event.email == event.display_name == "[redacted]"
    assert event.channel == "app"


def test_the_library_entry_point_gives_the_same_rows(accounts: Accounts, history: History) -> None:
    """`Projection.process_event(event, tracking)`, one event per transaction."""
    by_runner = AccountDirectory(accounts.database)
    one_by_one = AccountDirectory(accounts.database, suffix="__library")
    catch_up(accounts, by_runner)
    one_by_one.create()
    mapper = facts_mapper(accounts.mapper)

    for notification in accounts.recorder.select_notifications(start=1, limit=1000):
        one_by_one.process_event(
            mapper.to_domain_event(notification), Tracking(APPLICATION_NAME, notification.id)
        )

    assert every_table(accounts, one_by_one) == every_table(accounts, by_runner)
