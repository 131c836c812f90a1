"""`lifecycle audit replay`: every aggregate rebuilt from the log, each event checked against
the rule its command enforces, asked of the domain itself (`Account.check_*`), so the replay
and the commands cannot drift apart.

Stored events are folded from their stored states (lifecycle.stored_fold: the application's
transcoder, parsing with orjson, and its mapper's opening of sealed fields, then the domain's
own folds, without building the library's event objects), so every sealed personal field must
still open under its account's key (a failure is a `decodes` violation); no value leaves the
process.

The log is read a page at a time, each account's wrapped key in the same statement as its
`Registered` event (`stream_pages_with_keys`), key and claim-holder rules take one query per
page, and memory stays flat in log size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from typing import Any
from uuid import UUID

from eventsourcing.domain import OriginatorIDError, OriginatorVersionError

from lifecycle import event_names
from lifecycle.account_terms import AccountStatus
from lifecycle.application import Accounts
from lifecycle.audit.forked import run_forked
from lifecycle.audit.replay_report import ReplayReport, Violation
from lifecycle.crypto import PersonalDataMapper
from lifecycle.domain import Account, changed_parts
from lifecycle.email_claim import EmailClaim, legacy_holder
from lifecycle.errors import LifecycleError
from lifecycle.storage import Database
from lifecycle.stored_fold import (
    EVERY_ID,
    KINDS,
    EventKind,
    Facts,
    IdRange,
    Row,
    StoredFold,
    fold,
    heap_frozen,
    id_ranges,
    stream_pages_with_keys,
)

LEGACY_PREFIX = legacy_holder("")

ProgressCallback = Callable[[int, int], None]
# Processes a replay folds in at most, and the events that make a second one worth forking.
MAX_WORKERS = 4
EVENTS_PER_WORKER = 4000


# Rule name -> the domain's check, asked of the state before the event (its facts: the event's
# values, lifecycle.stored_fold); a raise is a violation.
Rule = tuple[str, Callable[[Account, Facts], object]]
RULES: dict[type[Account.Event], tuple[Rule, ...]] = {
    # Asked of the first event, before there is an account. The e-mail rule is not: it has
    # grown stricter over time, and addresses stored before stay valid facts.
    Account.Registered: (
        # A purged member's name reads back redacted, which is no empty name.
        ("display_name_given", lambda a, e: Account.check_display_name_is_given(e["display_name"])),
        ("channel_known", lambda a, e: Account.check_channel_is_known(e["channel"])),
    ),
    Account.PreferencesEdited: (
        ("active_only", lambda a, e: a.check_account_is_active()),
        ("parts_known", lambda a, e: a.check_preference_parts_are_known(changed_parts(e))),
        ("parts_change", lambda a, e: a.check_parts_change(_edited_parts(e))),
    ),
    Account.ScoutReceived: (
        ("active_only", lambda a, e: a.check_account_is_active()),
        ("scout_once", lambda a, e: a.check_scout_is_new(e["scout_id"])),
    ),
    Account.GiftClaimed: (
        ("active_only", lambda a, e: a.check_account_is_active()),
        ("one_gift", lambda a, e: a.check_gift_is_unclaimed()),
        ("gift_company_scouted", lambda a, e: a.check_company_scouted(e["company_id"])),
        ("gift_terms", lambda a, e: a.check_gift_terms(e["gift_kind"], e["amount_jpy"])),
    ),
    Account.WithdrawalRequested: (
        ("withdraw_once", lambda a, e: a.check_account_is_active()),
        ("reason_known", lambda a, e: a.check_withdrawal_reason_is_known(e["reason"])),
        (
            "reason_details_fit",
            lambda a, e: a.check_reason_details_fit(e["reason"], e["reason_details"]),
        ),
        ("comment_fits", lambda a, e: a.check_comment_fits(e["comment"])),
        (
            "gift_loss_acknowledged",
            lambda a, e: a.check_gift_loss_is_acknowledged(
                e["reason"], e["acknowledged_gift_loss"]
            ),
        ),
        ("gift_forfeited_flag", lambda a, e: a.check_gift_forfeit(e["gift_forfeited"])),
    ),
    Account.Purged: (("purge_after_withdrawal", lambda a, e: a.check_account_is_withdrawing()),),
}
RULES_BY_TOPIC: dict[str, tuple[Rule, ...]] = {cls.TOPIC: rules for cls, rules in RULES.items()}


def replay(
    accounts: Accounts,
    *,
    progress: ProgressCallback | None = None,
    keep: int = 100,
    workers: int | None = None,
) -> ReplayReport:
    """Rebuild every aggregate from the log and check every rule on the way.

    `workers`: processes folding side by side, each a range of the id space (None: one per
    available core, up to MAX_WORKERS, fewer for a short log); one on a database only this
    process may open (SQLite). The reports add up to what one process finds."""
    database = accounts.database
    with database.transaction(commit=False) as cursor:
        row = cursor.execute(f"SELECT COUNT(*) FROM {database.events_table}").fetchone()
    total = int(row[0]) if row else 0
    ranges = id_ranges(_workers(database, total, workers))

    def told(done: int) -> None:
        if progress is not None:
            progress(done, max(total, done))

    if len(ranges) == 1:
        report = _replay_ids(accounts, EVERY_ID, keep, told)
    else:
        # A child reads on one connection at a time: a pool of one opens and closes fastest.
        env = {**accounts.env, "POSTGRES_POOL_SIZE": "1"}
        parts = [partial(_replay_part, accounts, env, ids, keep) for ids in ranges]
        # The pool's threads still opening a connection could hold a lock (libpq, DNS,
        # OpenSSL) that a forked child would inherit held: forked only once they are idle.
        wait = getattr(database.datastore.pool, "wait", None)
        if wait is not None:
            wait(timeout=30.0)
        report = ReplayReport()
        for part in run_forked(parts, told):
            report.merge(part, keep)
    told(report.events)
    # Every account not purged holds one claim, and a purge releases it: more held claims than
    # such accounts means a purge that kept its address. Counted, since a sealed holder names
    # no account (see lifecycle.email_claim.EmailClaim).
    live = report.unfolded_accounts + sum(
        n for status, n in report.accounts.items() if status != AccountStatus.PURGED.value
    )
    if report.held_claims > live:
        excess = report.held_claims - live
        detail = f"{excess} claim(s) held beyond the {live} accounts not purged"
        report.add(Violation("email_claims", None, "claim_released_on_purge", detail), keep)
    return report


def _workers(database: Database, total: int, asked: int | None) -> int:
    if not database.dialect.shared_by_processes:
        return 1
    if asked is not None:
        return max(1, asked)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_WORKERS, cores or 1, total // EVENTS_PER_WORKER))


def _replay_part(
    parent: Accounts,
    env: dict[str, str],
    ids: IdRange,
    keep: int,
    tell: Callable[[int], None],
) -> ReplayReport:
    """One range of the id space: the first in this process with its application, each other
    in a forked child, with an application (and connections) of its own."""
    if ids[0] is None:
        return _replay_ids(parent, ids, keep, tell)
    accounts = Accounts(env=env)
    try:
        return _replay_ids(accounts, ids, keep, tell)
    finally:
        accounts.close()


def _replay_ids(
    accounts: Accounts, ids: IdRange, keep: int, tell: Callable[[int], None]
) -> ReplayReport:
    """Every aggregate in `ids` folded and checked, a page at a time; `tell`: events so far."""
    report = ReplayReport()
    mapper = accounts.mapper
    assert isinstance(mapper, PersonalDataMapper)
    folder = StoredFold(mapper)
    with heap_frozen():
        for streams, wrapped_keys in stream_pages_with_keys(accounts.database, ids=ids):
            _replay_page(accounts, folder, streams, wrapped_keys, report=report, keep=keep)
            tell(report.events)
    return report


def _replay_page(
    accounts: Accounts,
    folder: StoredFold,
    streams: list[list[Row]],
    wrapped_keys: dict[UUID, bytes | None],
    *,
    report: ReplayReport,
    keep: int,
) -> None:
    """Fold each complete stream of one page; the page's facts kept elsewhere come in bulk."""
    keys = _fresh_keys(accounts, wrapped_keys)
    folded: list[Account] = []
    held: dict[UUID, UUID] = {}  # claim id -> the account holding it
    for stream in streams:
        report.aggregates += 1
        report.events += len(stream)
        first = KINDS.get(stream[0][2])
        kind = None if first is None else first.aggregate
        if kind is Account:
            found, account = _fold_account(folder, stream)
            if account is not None:
                folded.append(account)
            else:
                report.unfolded_accounts += 1
        elif kind is EmailClaim:
            found, claim = _fold_claim(folder, stream)
            report.email_claims += claim is not None
            report.held_claims += claim is not None and claim.holder is not None
            # Only a holder recorded before holders were sealed names its account; a sealed
            # holder is unlinkable by design (its account's key says it, until destroyed).
            if claim is not None and claim.holder and claim.holder.startswith(LEGACY_PREFIX):
                held[claim.id] = UUID(claim.holder.removeprefix(LEGACY_PREFIX))
        else:
            found = [Violation(str(stream[0][0]), None, "known_aggregate", stream[0][2])]
        for violation in found:
            report.add(violation, keep)
    for account in folded:
        report.accounts[account.status.value] += 1
    for violation in [
        *_key_rules(accounts.database, keys, folded),
        *_holder_rules(accounts.database, held),
    ]:
        report.add(violation, keep)


def _decoded(folder: StoredFold, row: Row, aggregate: type) -> tuple[EventKind, Facts] | Violation:
    """A stored event's kind and facts; a Violation in their place when it does not decode
    or belongs to another kind of aggregate."""
    originator_id, version, topic, _ = row
    try:
        facts = folder.facts(*row)
    except Exception as error:
        detail = f"{topic} does not decode ({type(error).__name__})"
        return Violation(str(originator_id), version, "decodes", detail)
    kind = KINDS[topic]
    if kind.aggregate is not aggregate:
        return Violation(str(originator_id), version, "known_aggregate", topic)
    return kind, facts


def _fold_account(folder: StoredFold, stream: list[Row]) -> tuple[list[Violation], Account | None]:
    subject = stream[0][0]  # made a string only for a violation
    found: list[Violation] = []
    account: Account | None = None
    previous_time: datetime | None = None
    for row in stream:
        decoded = _decoded(folder, row, Account)
        if isinstance(decoded, Violation):
            return [*found, decoded], None
        kind, facts = decoded
        version = row[1]
        if account is None:
            if kind.topic != event_names.REGISTERED or version != 1:
                found.append(Violation(str(subject), version, "starts_registered", kind.name))
                return found, None
            _registration_rules(facts, found, subject)
        else:
            _account_rules(account, kind, facts, found, subject)
        timestamp: datetime = facts["timestamp"]
        if previous_time is not None and timestamp < previous_time:
            found.append(
                Violation(
                    str(subject), version, "timestamps_ordered", "earlier than the one before"
                )
            )
        previous_time = timestamp
        try:
            folded = fold(account, kind, facts)
        except (OriginatorVersionError, OriginatorIDError) as error:
            found.append(
                Violation(str(subject), version, "versions_contiguous", type(error).__name__)
            )
            return found, None
        assert isinstance(folded, Account)
        account = folded
    return found, account


def _edited_parts(facts: Facts) -> dict[str, Any]:
    return {part: facts[part] for part in changed_parts(facts)}


def _registration_rules(facts: Facts, found: list[Violation], subject: UUID) -> None:
    """What `Account.register` would have refused of the first event."""
    for rule, check in RULES[Account.Registered]:
        try:
            check(None, facts)  # type: ignore[arg-type]
        except LifecycleError as error:
            found.append(Violation(str(subject), 1, rule, f"Registered: {error.code}"))


def _account_rules(
    account: Account, kind: EventKind, facts: Facts, found: list[Violation], subject: UUID
) -> None:
    """What the aggregate's commands would have refused, asked of the state before the event."""
    version: int = facts["originator_version"]
    if kind.topic == event_names.REGISTERED:
        found.append(Violation(str(subject), version, "registered_once", "a second Registered"))
        return
    try:
        account.check_account_is_not_purged()
    except LifecycleError:
        detail = f"{kind.name} after Purged"
        found.append(Violation(str(subject), version, "nothing_after_purge", detail))
        return
    for rule, check in RULES_BY_TOPIC.get(kind.topic, ()):
        try:
            check(account, facts)
        except LifecycleError as error:
            detail = f"{kind.name} while {account.status.value}: {error.code}"
            found.append(Violation(str(subject), version, rule, detail))


def _fold_claim(folder: StoredFold, stream: list[Row]) -> tuple[list[Violation], EmailClaim | None]:
    subject = stream[0][0]  # made a string only for a violation
    found: list[Violation] = []
    claim: EmailClaim | None = None
    for row in stream:
        decoded = _decoded(folder, row, EmailClaim)
        if isinstance(decoded, Violation):
            return [*found, decoded], None
        kind, facts = decoded
        version = row[1]
        if claim is None and kind.topic != event_names.EMAIL_CLAIM_CREATED:
            found.append(Violation(str(subject), version, "claim_starts_created", kind.name))
            return found, None
        if claim is not None:
            if kind.topic == event_names.EMAIL_CLAIMED:
                try:
                    claim.check_claimable_by(facts["holder"])
                except LifecycleError:
                    found.append(
                        Violation(
                            str(subject), version, "one_account_per_email", "claimed while held"
                        )
                    )
            if kind.topic == event_names.EMAIL_RELEASED and not claim.is_held_by(facts["holder"]):
                found.append(
                    Violation(str(subject), version, "release_by_holder", "released by another")
                )
        try:
            folded = fold(claim, kind, facts)
        except (OriginatorVersionError, OriginatorIDError) as error:
            found.append(
                Violation(str(subject), version, "versions_contiguous", type(error).__name__)
            )
            return found, None
        assert isinstance(folded, EmailClaim)
        claim = folded
    return found, claim


def _fresh_keys(accounts: Accounts, wrapped_keys: dict[UUID, bytes | None]) -> dict[UUID, bool]:
    """Which of the page's accounts have a key, as the page's own read found them (not the
    vault's short cache); the mapper then finds each key cached."""
    vault = accounts.vault
    return {
        account_id: vault.remember_wrapped(account_id, wrapped) is not None
        for account_id, wrapped in wrapped_keys.items()
    }


def _key_rules(
    database: Database, keys: dict[UUID, bool], folded: list[Account]
) -> Iterator[Violation]:
    """A live account has its key; a purged one has none and a tombstone (one query for the
    page's purged accounts)."""
    if not folded:
        return
    purged = [account.id for account in folded if account.status is AccountStatus.PURGED]
    tombstones = _tombstones(database, purged)
    for account in folded:
        has_key = keys.get(account.id, False)
        if account.status is AccountStatus.PURGED:
            if has_key or account.id not in tombstones:
                yield Violation(
                    str(account.id),
                    None,
                    "key_destroyed_on_purge",
                    "a purged account's key still exists",
                )
        elif not has_key:
            yield Violation(
                str(account.id),
                None,
                "key_present",
                "a live account's key is missing (its personal values are lost)",
            )


def _holder_rules(database: Database, held: dict[UUID, UUID]) -> Iterator[Violation]:
    """A legacy holder's account exists (one query for the page's holders); a claim held
    past its account's purge is counted once for the whole log (`replay`)."""
    if not held:
        return
    table = database.events_table
    where, params = database.any_of(
        "e.originator_id", [database.id_param(account_id) for account_id in set(held.values())]
    )
    with database.transaction(commit=False) as cursor:
        rows = cursor.execute(
            f"SELECT e.originator_id, e.topic FROM {table} e WHERE {where} "
            "AND e.originator_version = (SELECT MAX(m.originator_version) "
            f"FROM {table} m WHERE m.originator_id = e.originator_id)",
            params,
        ).fetchall()
    last_topic = {database.to_uuid(raw_id): str(topic) for raw_id, topic in rows}
    for claim_id, account_id in held.items():
        topic = last_topic.get(account_id)
        if topic is None:
            yield Violation(
                str(claim_id), None, "claim_holder_exists", "held by an unknown account"
            )


def _tombstones(database: Database, ids: list[UUID]) -> set[UUID]:
    """Which of these accounts' keys were destroyed (in `destroyed_keys`)."""
    if not ids:
        return set()
    where, params = database.any_of("account_id", [database.id_param(a) for a in ids])
    with database.transaction(commit=False) as cursor:
        rows = cursor.execute(
            f"SELECT account_id FROM {database.table('destroyed_keys')} WHERE {where}", params
        ).fetchall()
    return {database.to_uuid(row[0]) for row in rows}
