"""Export of the whole log as JSON Lines, and the replay that checks every rule."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from eventsourcing.persistence import StoredEvent
from projection_history import COMMENT, PERSONAL, History, account

from lifecycle.account_terms import MAX_COMMENT_LENGTH
from lifecycle.application import Accounts
from lifecycle.audit.export import export_log, parse_bound
from lifecycle.audit.replay import RULES, replay
from lifecycle.crypto import SEALED_FIELD
from lifecycle.domain import Account
from projections.base import JST


def exported(accounts: Accounts, **bounds: object) -> list[dict[str, object]]:
    out = io.StringIO()
    written = export_log(accounts, out, **bounds)  # type: ignore[arg-type]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert written == len(lines)
    return lines


def test_export_writes_every_event_in_order_as_stored(accounts: Accounts, history: History) -> None:
    lines = exported(accounts)

    head = accounts.recorder.max_notification_id()
    assert [line["notification_id"] for line in lines] == list(range(1, head + 1))
    first = lines[0]
    assert first["originator_id"] == str(history.active)
    assert first["originator_version"] == 1
    assert str(first["topic"]).endswith("Account.Registered")
    assert "sealed" in first["state"]  # type: ignore[operator]
    text = json.dumps(lines, ensure_ascii=False)
    for value in [*history.emails, COMMENT, PERSONAL["display_name"], PERSONAL["phone"]]:
        assert value not in text


def test_export_between_notification_ids(accounts: Accounts, history: History) -> None:
    lines = exported(accounts, since=3, until=5)

    assert [line["notification_id"] for line in lines] == [3, 4, 5]


def test_export_between_times(accounts: Accounts, history: History) -> None:
    withdrawn_at = account(accounts, history.withdrawing).withdrawn_at
    assert withdrawn_at is not None

    after = exported(accounts, since=withdrawn_at)
    before = exported(accounts, until=withdrawn_at)

    everything = exported(accounts)
    assert len(after) + len(before) == len(everything)
    assert str(after[0]["topic"]).endswith("WithdrawalRequested")
    assert all(str(line["timestamp"]) < withdrawn_at.isoformat() for line in before)


def test_bounds_are_ids_or_japan_dates() -> None:
    assert parse_bound("42") == 42
    assert parse_bound("2026-06-01") == datetime(2026, 6, 1, tzinfo=JST)
    assert parse_bound("2026-06-01T00:00:00+00:00") == datetime(2026, 6, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither"):
        parse_bound("yesterday")


def test_replay_of_a_valid_log_finds_nothing(accounts: Accounts, history: History) -> None:
    progress: list[tuple[int, int]] = []

    report = replay(accounts, progress=lambda done, total: progress.append((done, total)))

    assert report.ok, report.as_dict()
    assert report.accounts == {"active": 2, "withdrawing": 1, "purged": 1}
    assert report.email_claims == 4
    assert report.events == accounts.recorder.max_notification_id()
    assert progress[-1] == (report.events, report.events)


def append_raw(accounts: Accounts, event: Account.Event) -> None:
    """Write an event the aggregate would have refused, straight into the store."""
    stored: StoredEvent = accounts.mapper.to_stored_event(event)
    accounts.recorder.insert_events([stored])


def event_after(accounts: Accounts, account_id: UUID, cls: type, **fields: object) -> Account.Event:
    last = account(accounts, account_id)
    return cls(  # type: ignore[no-any-return]
        originator_id=account_id,
        originator_version=last.version + 1,
        timestamp=last.modified_on + timedelta(seconds=1),
        **fields,
    )


def scout_after_purge(accounts: Accounts, history: History) -> None:
    """A scout stored after the purged member's `Purged`: `nothing_after_purge` forbids it."""
    append_raw(
        accounts,
        event_after(
            accounts,
            history.purged,
            Account.ScoutReceived,
            scout_id="late",
            company_id="acme",
            job_id="j",
            received_at=datetime.now(UTC),
        ),
    )


def lose_key(accounts: Accounts, account_id: UUID) -> None:
    """The account's data key deleted while it is not purged: `key_present` flags it."""
    db = accounts.database
    with db.transaction() as cursor:
        cursor.execute(
            f"DELETE FROM {db.table('account_keys')} WHERE account_id = %s",
            (db.id_param(account_id),),
        )


def test_replay_reports_events_the_rules_forbid(accounts: Accounts, history: History) -> None:
    scout_after_purge(accounts, history)
    append_raw(
        accounts,
        event_after(
            accounts,
            history.quiet,
            Account.GiftClaimed,
            company_id="never-scouted",
            start_date=datetime.now(UTC).date(),
            gift_kind="gift_card",
            amount_jpy=50_000,
        ),
    )

    report = replay(accounts)

    assert not report.ok
    assert report.by_rule == {"nothing_after_purge": 1, "gift_company_scouted": 1, "gift_terms": 1}
    described = "\n".join(v.describe() for v in report.first)
    assert f"{history.purged} v6: nothing_after_purge" in described
    assert str(history.quiet) in described


def test_replay_reports_a_lost_key(accounts: Accounts, history: History) -> None:
    lose_key(accounts, history.active)

    report = replay(accounts)

    assert report.by_rule == {"key_present": 1}


def test_a_replay_split_over_processes_finds_what_one_process_finds(
    accounts: Accounts, history: History
) -> None:
    """Each range of ids folded by a process of its own (PostgreSQL; SQLite stays in one):
    the counts and the violations add up to one process's report."""
    scout_after_purge(accounts, history)
    lose_key(accounts, history.active)
    told: list[tuple[int, int]] = []

    alone = replay(accounts, workers=1)
    split = replay(accounts, workers=3, progress=lambda done, total: told.append((done, total)))

    assert alone.by_rule == {"nothing_after_purge": 1, "key_present": 1}
    everything_but_order = {**alone.as_dict(), "first_violations": None}
    assert {**split.as_dict(), "first_violations": None} == everything_but_order
    assert sorted(split.as_dict()["first_violations"]) == sorted(
        alone.as_dict()["first_violations"]
    )
    assert told[-1] == (alone.events, alone.events)


def test_replay_asks_the_domain_about_withdrawal_and_purge(
    accounts: Accounts, history: History
) -> None:
    # Hired via the platform, scouted, gift unclaimed: the loss must be acknowledged and the
    # gift recorded as forfeited; and only a withdrawing account may be purged.
    append_raw(
        accounts,
        event_after(
            accounts,
            history.active,
            Account.WithdrawalRequested,
            reason="hired_via_platform",
            reason_details=["scouts"],  # a detail of another reason
            comment=None,
            acknowledged_gift_loss=False,
            gift_forfeited=False,
        ),
    )
    append_raw(accounts, event_after(accounts, history.quiet, Account.Purged))

    report = replay(accounts)

    assert report.by_rule == {
        "reason_details_fit": 1,
        "gift_loss_acknowledged": 1,
        "gift_forfeited_flag": 1,
        "purge_after_withdrawal": 1,
        "claim_released_on_purge": 1,  # the raw Purged did not release the e-mail either
    }


def test_replay_reports_a_sealed_field_that_does_not_open(
    accounts: Accounts, history: History
) -> None:
    db = accounts.database
    where = "WHERE originator_id = %s AND originator_version = 1"
    subject = (db.id_param(history.active),)
    with db.transaction() as cursor:
        row = cursor.execute(f"SELECT state FROM {db.events_table} {where}", subject).fetchone()
        assert row is not None
        state = json.loads(bytes(row[0]))
        sealed = state[SEALED_FIELD]["data"]
        state[SEALED_FIELD]["data"] = ("A" if sealed[0] != "A" else "B") + sealed[1:]
        cursor.execute(
            f"UPDATE {db.events_table} SET state = %s {where}",
            (json.dumps(state).encode(), *subject),
        )

    report = replay(accounts)

    assert report.by_rule == {"decodes": 1}
    assert f"{history.active} v1: decodes" in report.first[0].describe()


def test_replay_asks_the_rules_the_commands_check_of_their_input(
    accounts: Accounts, history: History
) -> None:
    # A withdrawal comment over the limit, which `request_withdrawal` refuses.
    forfeited = accounts.load_for_audit(history.active).gift_forfeited_by_withdrawal
    append_raw(
        accounts,
        event_after(
            accounts,
            history.active,
            Account.WithdrawalRequested,
            reason="other",
            comment="x" * (MAX_COMMENT_LENGTH + 1),
            acknowledged_gift_loss=False,
            gift_forfeited=forfeited,
            reason_details=[],
        ),
    )

    report = replay(accounts)

    assert report.by_rule == {"comment_fits": 1}
    registration = {rule for rule, _ in RULES[Account.Registered]}
    assert registration == {"display_name_given", "channel_known"}
