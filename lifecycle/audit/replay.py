"""Auditors' passes over the whole log: export it as JSON Lines, replay it against the rules.

Both stream: the log is read a page at a time and nothing accumulates, so memory stays flat
however long the log is. Neither decrypts: the export carries the stored state as it is
(personal fields sealed), and the replay reads events through `FactsMapper`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any, TextIO
from uuid import UUID

from eventsourcing.domain import OriginatorIDError, OriginatorVersionError
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic, resolve_topic

from lifecycle.application import Accounts
from lifecycle.domain import (
    GIFT_AMOUNT_JPY,
    GIFT_KIND,
    Account,
    AccountStatus,
    EmailClaim,
    WithdrawalReason,
)
from lifecycle.storage import Database
from projections.base import JST, facts_mapper
from projections.hashchain import PAGE, notifications

PURGED_TOPIC = get_topic(Account.Purged)

ProgressCallback = Callable[[int, int], None]


# Export


def parse_bound(text: str) -> int | datetime:
    """A notification id (digits) or an ISO 8601 date / date-time; JST when no offset given."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a notification id nor an ISO 8601 date") from None
    if len(text) == 10:  # a bare date: that day's midnight
        moment = datetime.combine(moment.date(), time())
    return moment if moment.tzinfo else moment.replace(tzinfo=JST)


def export_log(
    accounts: Accounts,
    out: TextIO,
    *,
    since: int | datetime | None = None,
    until: int | datetime | None = None,
    progress: ProgressCallback | None = None,
) -> int:
    """Write every stored event in notification order as one JSON object a line.

    `since` and `until` are notification ids (both inclusive) or times (from inclusive, to
    exclusive). Returns how many events were written.
    """
    recorder = accounts.recorder
    total = recorder.max_notification_id() or 0
    start = since - 1 if isinstance(since, int) and since > 0 else 0
    stop = until if isinstance(until, int) else None
    written = read = 0
    for notification in notifications(recorder, after=start):
        if stop is not None and notification.id > stop:
            break
        read += 1
        state = json.loads(bytes(notification.state))
        timestamp = _timestamp_of(state)
        if _outside(timestamp, since, until):
            continue
        line = {
            "notification_id": notification.id,
            "originator_id": str(notification.originator_id),
            "originator_version": notification.originator_version,
            "topic": notification.topic,
            "timestamp": timestamp.isoformat() if timestamp else None,
            "state": state,
        }
        out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
        written += 1
        if progress is not None and read % PAGE == 0:
            progress(notification.id, total)
    if progress is not None:
        progress(total, total)
    return written


def _timestamp_of(state: dict[str, Any]) -> datetime | None:
    raw = state.get("timestamp")
    if isinstance(raw, dict):
        raw = raw.get("_data_")
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


def _outside(
    timestamp: datetime | None, since: int | datetime | None, until: int | datetime | None
) -> bool:
    if isinstance(since, datetime) and (timestamp is None or timestamp < since):
        return True
    return isinstance(until, datetime) and (timestamp is None or timestamp >= until)


# Replay


@dataclass(frozen=True)
class Violation:
    originator_id: str
    version: int | None
    rule: str
    detail: str

    def describe(self) -> str:
        at = f" v{self.version}" if self.version is not None else ""
        return f"{self.originator_id}{at}: {self.rule}: {self.detail}"


@dataclass
class ReplayReport:
    events: int = 0
    aggregates: int = 0
    accounts: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in AccountStatus})
    email_claims: int = 0
    violations: int = 0
    first: list[Violation] = field(default_factory=list)
    by_rule: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.violations == 0

    def add(self, violation: Violation, keep: int) -> None:
        self.violations += 1
        self.by_rule[violation.rule] = self.by_rule.get(violation.rule, 0) + 1
        if len(self.first) < keep:
            self.first.append(violation)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "aggregates": self.aggregates,
            "accounts": self.accounts,
            "email_claims": self.email_claims,
            "violations": self.violations,
            "violations_by_rule": self.by_rule,
            "first_violations": [v.describe() for v in self.first],
        }


def stored_streams(database: Database, page: int = 2000) -> Iterator[list[StoredEvent]]:
    """Every aggregate's stored events, one aggregate at a time, in id order."""
    table = database.events_table
    last: tuple[Any, int] | None = None
    stream: list[StoredEvent] = []
    while True:
        where, params = (
            ("", ())
            if last is None
            else (
                "WHERE (originator_id, originator_version) > (%s, %s) ",
                last,
            )
        )
        with database.transaction(commit=False) as cursor:
            rows = cursor.execute(
                f"SELECT originator_id, originator_version, topic, state FROM {table} {where}"
                "ORDER BY originator_id, originator_version LIMIT %s",
                (*params, page),
            ).fetchall()
        for raw_id, version, topic, state in rows:
            originator_id = raw_id if isinstance(raw_id, UUID) else UUID(raw_id)
            if stream and stream[0].originator_id != originator_id:
                yield stream
                stream = []
            stream.append(StoredEvent(originator_id, int(version), str(topic), bytes(state)))
        if len(rows) < page:
            break
        last = (rows[-1][0], int(rows[-1][1]))
    if stream:
        yield stream


def replay(
    accounts: Accounts, *, progress: ProgressCallback | None = None, keep: int = 100
) -> ReplayReport:
    """Rebuild every aggregate from the log and check every rule on the way."""
    database = accounts.database
    mapper = facts_mapper(accounts.mapper)
    report = ReplayReport()
    with database.transaction(commit=False) as cursor:
        row = cursor.execute(f"SELECT COUNT(*) FROM {database.events_table}").fetchone()
    total = int(row[0]) if row else 0
    next_report = PAGE
    for stream in stored_streams(database):
        report.aggregates += 1
        report.events += len(stream)
        checker = _checker_for(stream[0].topic)
        if checker is None:
            report.add(
                Violation(str(stream[0].originator_id), None, "known_aggregate", stream[0].topic),
                keep,
            )
            continue
        for violation in checker(accounts, mapper, stream, report):
            report.add(violation, keep)
        if progress is not None and report.events >= next_report:
            next_report = report.events + PAGE
            progress(report.events, total)
    if progress is not None:
        progress(report.events, max(total, report.events))
    return report


Checker = Callable[[Accounts, Any, list[StoredEvent], ReplayReport], Iterator[Violation]]


def _checker_for(topic: str) -> Checker | None:
    try:
        cls = resolve_topic(topic)
    except Exception:
        return None
    if isinstance(cls, type) and issubclass(cls, Account.Event):
        return _check_account
    if isinstance(cls, type) and issubclass(cls, EmailClaim.Event):
        return _check_claim
    return None


def _decoded(mapper: Any, stream: list[StoredEvent]) -> Iterator[tuple[Any, Violation | None]]:
    for stored in stream:
        try:
            yield mapper.to_domain_event(stored), None
        except Exception as error:
            yield (
                None,
                Violation(
                    str(stored.originator_id),
                    stored.originator_version,
                    "decodes",
                    f"{stored.topic} does not decode ({type(error).__name__})",
                ),
            )


def _check_account(
    accounts: Accounts, mapper: Any, stream: list[StoredEvent], report: ReplayReport
) -> Iterator[Violation]:
    subject = str(stream[0].originator_id)
    account: Account | None = None
    previous_time: datetime | None = None
    for event, failure in _decoded(mapper, stream):
        if failure is not None:
            yield failure
            return
        version = event.originator_version

        def violation(rule: str, detail: str, version: int = version) -> Violation:
            return Violation(subject, version, rule, detail)

        if account is None:
            if not isinstance(event, Account.Registered) or version != 1:
                yield violation("starts_registered", f"first event is {type(event).__name__}")
                return
        else:
            yield from (violation(*found) for found in _account_rules(account, event))
        if previous_time is not None and event.timestamp < previous_time:
            yield violation("timestamps_ordered", "earlier than the event before it")
        previous_time = event.timestamp
        try:
            mutated = event.mutate(account)
        except (OriginatorVersionError, OriginatorIDError, AssertionError) as error:
            yield violation("versions_contiguous", type(error).__name__)
            return
        assert isinstance(mutated, Account)
        account = mutated
    if account is None:
        return
    report.accounts[account.status.value] += 1
    yield from (Violation(subject, None, *found) for found in _key_rules(accounts, account))


def _account_rules(account: Account, event: Any) -> Iterator[tuple[str, str]]:
    """What the aggregate's commands would have refused, checked against the state before."""
    name = type(event).__name__
    if isinstance(event, Account.Registered):
        yield "registered_once", "a second Registered"
        return
    if account.status is AccountStatus.PURGED:
        yield "nothing_after_purge", f"{name} after Purged"
        return
    changes = Account.PreferencesEdited | Account.ScoutReceived | Account.GiftClaimed
    if isinstance(event, changes) and account.status is not AccountStatus.ACTIVE:
        yield "active_only", f"{name} while {account.status.value}"
    if isinstance(event, Account.ScoutReceived) and event.scout_id in account.scouts:
        yield "scout_once", "a scout id recorded twice"
    if isinstance(event, Account.GiftClaimed):
        if account.gift is not None:
            yield "one_gift", "a second GiftClaimed"
        if event.company_id not in account.scouting_companies:
            yield "gift_company_scouted", "gift for a company that never scouted the member"
        if event.amount_jpy != GIFT_AMOUNT_JPY or event.gift_kind != GIFT_KIND:
            yield "gift_terms", f"{event.gift_kind} {event.amount_jpy} JPY"
    if isinstance(event, Account.WithdrawalRequested):
        yield from _withdrawal_rules(account, event)
    if isinstance(event, Account.Purged) and account.status is not AccountStatus.WITHDRAWING:
        yield "purge_after_withdrawal", f"Purged while {account.status.value}"


def _withdrawal_rules(account: Account, event: Any) -> Iterator[tuple[str, str]]:
    if account.status is not AccountStatus.ACTIVE:
        yield "withdraw_once", f"WithdrawalRequested while {account.status.value}"
    if event.reason not in {reason.value for reason in WithdrawalReason}:
        yield "reason_known", f"unknown reason {event.reason!r}"
    if (
        event.reason == WithdrawalReason.HIRED_VIA_PLATFORM
        and account.gift is None
        and not event.acknowledged_gift_loss
    ):
        yield "gift_loss_acknowledged", "hired via the platform, gift unclaimed, not acknowledged"
    if event.gift_forfeited != (account.gift is None and account.gift_eligible):
        yield "gift_forfeited_flag", f"gift_forfeited={event.gift_forfeited} does not follow"


def _key_rules(accounts: Accounts, account: Account) -> Iterator[tuple[str, str]]:
    db = accounts.database
    with db.transaction(commit=False) as cursor:
        row = cursor.execute(
            f"SELECT (SELECT COUNT(*) FROM {db.table('account_keys')} WHERE account_id = %s) "
            "AS has_key, (SELECT COUNT(*) FROM "
            f"{db.table('destroyed_keys')} WHERE account_id = %s) AS destroyed",
            (db.id_param(account.id), db.id_param(account.id)),
        ).fetchone()
    has_key, destroyed = (bool(row[0]), bool(row[1])) if row else (False, False)
    if account.status is AccountStatus.PURGED:
        if has_key or not destroyed:
            yield "key_destroyed_on_purge", "a purged account's key still exists"
    elif not has_key:
        yield "key_present", "a live account's key is missing (its personal values are lost)"


def _check_claim(
    accounts: Accounts, mapper: Any, stream: list[StoredEvent], report: ReplayReport
) -> Iterator[Violation]:
    subject = str(stream[0].originator_id)
    claim: EmailClaim | None = None
    for event, failure in _decoded(mapper, stream):
        if failure is not None:
            yield failure
            return
        version = event.originator_version
        if claim is None and not isinstance(event, EmailClaim.Created):
            yield Violation(subject, version, "claim_starts_created", type(event).__name__)
            return
        if claim is not None:
            if isinstance(event, EmailClaim.Claimed) and claim.account_id not in (
                None,
                event.account_id,
            ):
                yield Violation(subject, version, "one_account_per_email", "claimed while held")
            if isinstance(event, EmailClaim.Released) and claim.account_id != event.account_id:
                yield Violation(subject, version, "release_by_holder", "released by another")
        try:
            mutated = event.mutate(claim)
        except (OriginatorVersionError, OriginatorIDError, AssertionError) as error:
            yield Violation(subject, version, "versions_contiguous", type(error).__name__)
            return
        assert isinstance(mutated, EmailClaim)
        claim = mutated
    report.email_claims += 1
    if claim is not None and claim.account_id is not None:
        db = accounts.database
        with db.transaction(commit=False) as cursor:
            row = cursor.execute(
                f"SELECT topic FROM {db.events_table} WHERE originator_id = %s "
                "ORDER BY originator_version DESC LIMIT 1",
                (db.id_param(claim.account_id),),
            ).fetchone()
        if row is None:
            yield Violation(subject, None, "claim_holder_exists", "held by an unknown account")
        elif row[0] == PURGED_TOPIC:
            yield Violation(subject, None, "claim_released_on_purge", "held by a purged account")
