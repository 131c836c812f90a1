"""Crypto-shredding on SQLite and the real PostgreSQL: what the database holds, and when."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import DatabaseError, IntegrityError, MapperDeserialisationError

from lifecycle.account_terms import REDACTED, AccountStatus
from lifecycle.application import Accounts
from lifecycle.domain import Account
from lifecycle.email_claim import EmailClaim
from lifecycle.errors import KeyDestroyedError
from lifecycle.settings import Settings
from lifecycle.storage import Cursor, Database

MEMBERS: list[dict[str, Any]] = [
    {
        "email": "Zephyrine.Okonkwo-7741@Example.JP",
        "display_name": "Zephyrine Okonkwo",
        "phone": "+81-90-7741-3321",
        "job_title": "Quantum Pastry Architect",
        "work_history": [{"company": "Zanzibar Widgets KK", "role": "Glaze Lead", "years": 3}],
        "comment": "Please forget Zephyrine and her chrysanthemum collection",
        "new_job_title": "Chief Meringue Officer",
        "new_company": "Quixotic Fjord Holdings",
    },
    {
        "email": "yamada.hanako.9312@example.co.jp",
        "display_name": "山田花子",
        "phone": "080-9312-4455",
        "job_title": "経理マネージャー",
        "work_history": [{"company": "株式会社ミカヅキ商事", "role": "経理", "years": 7}],
        "comment": "転職が決まりました。花子より",
        "new_job_title": "財務部長",
        "new_company": "ホシゾラ物産",
    },
    {
        "email": "bartholomew.quince@mail.example.com",
        "display_name": "Bartholomew Quince",
        "phone": "070-5555-0199",
        "job_title": "Lighthouse Logistics Planner",
        "work_history": [{"company": "Vellichor Shipping", "role": "Planner", "years": 2}],
        "comment": "Bartholomew moved to Reykjavik",
        "new_job_title": "Harbour Systems Analyst",
        "new_company": "Mizzenmast Analytics",
    },
]


def raw_rows(db: Database) -> list[bytes]:
    """Every events-table row as bytes: id, topic and state, exactly as stored."""
    with db.transaction(commit=False) as cursor:
        rows = cursor.execute(
            f"SELECT originator_id, topic, state FROM {db.events_table}"
        ).fetchall()
    return [str(r[0]).encode() + b"|" + str(r[1]).encode() + b"|" + bytes(r[2]) for r in rows]


def encodings(value: str) -> set[bytes]:
    """Plaintext forms a leak would take: as given, lower-cased, JSON-escaped, base64, hex."""
    forms: set[bytes] = set()
    for text in {value, value.lower(), value.casefold()}:
        raw = text.encode()
        forms |= {
            raw,
            json.dumps(text).strip('"').encode(),  # \uXXXX escapes
            base64.b64encode(raw),
            base64.urlsafe_b64encode(raw),
            raw.hex().encode(),
        }
    return forms


def personal_values(member: dict[str, Any]) -> list[str]:
    values = [
        member["email"],
        member["display_name"],
        member["phone"],
        member["job_title"],
        member["comment"],
        member["new_job_title"],
        member["new_company"],
    ]
    for entry in member["work_history"]:
        values += [entry["company"], entry["role"]]
    # A single name or the local part alone should not show either.
    values += member["display_name"].split()
    values.append(member["email"].split("@")[0])
    return values


def live_member(accounts: Accounts, member: dict[str, Any]) -> UUID:
    account_id = accounts.register(
        email=member["email"],
        display_name=member["display_name"],
        consent_version="2026-04",
        phone=member["phone"],
        job_title=member["job_title"],
        work_history=member["work_history"],
        profile={"birth_year": 1988, "prefecture": "Kanagawa"},
    )
    accounts.edit_preferences(
        account_id,
        job_title=member["new_job_title"],
        work_history=[*member["work_history"], {"company": member["new_company"], "years": 1}],
    )
    accounts.receive_scout(account_id, scout_id=f"s-{account_id}", company_id="acme", job_id="j")
    return account_id


def test_stored_events_hold_no_personal_value_in_plaintext(accounts: Accounts) -> None:
    ids = [live_member(accounts, member) for member in MEMBERS]
    # One stays active, one is withdrawing, one is purged.
    accounts.request_withdrawal(ids[1], reason="hired_elsewhere", comment=MEMBERS[1]["comment"])
    accounts.request_withdrawal(ids[2], reason="other", comment=MEMBERS[2]["comment"])
    accounts.purge(ids[2])

    rows = raw_rows(accounts.database)
    # 3 events per member, 2 per claim, 2 withdrawals, Purged and the claim's Released.
    assert len(rows) == 3 * 3 + 3 * 2 + 2 + 2
    blob = b"\n".join(rows)
    # The check sees stored plaintext: facts kept for statistics are there.
    assert b"Kanagawa" in blob
    assert b"hired_elsewhere" in blob
    assert b"acme" in blob
    for member in MEMBERS:
        for value in personal_values(member):
            for form in encodings(value):
                assert form not in blob, f"{value!r} stored as {form!r}"
    # Claim ids are keyed: not a plain hash of the address.
    for member in MEMBERS:
        address = member["email"].strip().casefold().encode()
        for digest in (hashlib.sha256(address), hashlib.md5(address), hashlib.sha1(address)):
            assert digest.hexdigest()[:32].encode() not in blob
            assert str(UUID(digest.hexdigest()[:32])).encode() not in blob
    # The live accounts still read back in full.
    assert accounts.get_account(ids[0]).display_name == MEMBERS[0]["display_name"]
    assert accounts.get_account(ids[1]).withdrawal == {
        "reason": "hired_elsewhere",
        "reason_details": [],
        "comment": MEMBERS[1]["comment"],
        "acknowledged_gift_loss": False,
        "gift_forfeited": True,
    }


def test_data_keys_are_stored_wrapped(accounts: Accounts) -> None:
    account_id = live_member(accounts, MEMBERS[0])
    data_key = accounts.vault.find_key(account_id)
    assert data_key is not None
    assert len(data_key) == 32
    wrapped = key_row(accounts.database, account_id)
    assert wrapped is not None
    assert data_key not in wrapped
    assert base64.b64encode(data_key) not in wrapped


# Helpers on the raw tables.


def key_row(db: Database, account_id: UUID, cursor: Cursor | None = None) -> bytes | None:
    statement = f"SELECT wrapped_key FROM {db.table('account_keys')} WHERE account_id = %s"
    if cursor is not None:
        row = cursor.execute(statement, (db.id_param(account_id),)).fetchone()
    else:
        with db.transaction(commit=False) as own:
            row = own.execute(statement, (db.id_param(account_id),)).fetchone()
    return None if row is None else bytes(row[0])


def tombstoned(db: Database, account_id: UUID, cursor: Cursor | None = None) -> bool:
    statement = f"SELECT 1 FROM {db.table('destroyed_keys')} WHERE account_id = %s"
    if cursor is not None:
        return cursor.execute(statement, (db.id_param(account_id),)).fetchone() is not None
    with db.transaction(commit=False) as own:
        return own.execute(statement, (db.id_param(account_id),)).fetchone() is not None


def topics_of(db: Database, account_id: UUID) -> list[str]:
    with db.transaction(commit=False) as cursor:
        rows = cursor.execute(
            f"SELECT topic FROM {db.events_table} WHERE originator_id = %s "
            "ORDER BY originator_version",
            (db.id_param(account_id),),
        ).fetchall()
    return [str(row[0]).rsplit(".", 1)[-1] for row in rows]


def insert_stored_event(db: Database, cursor: Cursor, stored: Any) -> None:
    cursor.execute(
        f"INSERT INTO {db.events_table} (originator_id, originator_version, topic, state) "
        "VALUES (%s, %s, %s, %s)",
        (db.id_param(stored.originator_id), stored.originator_version, stored.topic, stored.state),
    )


def withdrawing_member(accounts: Accounts) -> UUID:
    account_id = live_member(accounts, MEMBERS[0])
    accounts.request_withdrawal(account_id, reason="other", comment=MEMBERS[0]["comment"])
    return account_id


def stored_purge(accounts: Accounts, account_id: UUID) -> Any:
    account = accounts.get_account(account_id)
    assert account.purge()
    [event] = account.collect_events()
    assert isinstance(event, Account.Purged)
    return accounts.mapper.to_stored_event(event)


def reads_in_full(accounts: Accounts, account_id: UUID) -> bool:
    accounts.vault.forget(account_id)
    account = accounts.repository.get(account_id)
    assert isinstance(account, Account)
    if account.email == REDACTED:
        assert account.display_name == REDACTED
        assert account.withdrawal is not None
        assert account.withdrawal["comment"] == REDACTED
        return False
    assert account.email == MEMBERS[0]["email"].casefold()
    assert account.display_name == MEMBERS[0]["display_name"]
    return True


# Atomicity of Purged and key destruction.


def test_rolled_back_purge_keeps_the_key_and_records_nothing(accounts: Accounts) -> None:
    db = accounts.database
    account_id = withdrawing_member(accounts)
    stored = stored_purge(accounts, account_id)
    wrapped = key_row(db, account_id)
    assert wrapped is not None

    with db.transaction(commit=False) as cursor:
        insert_stored_event(db, cursor, stored)
        # Inside the transaction the key is already gone and tombstoned...
        assert key_row(db, account_id, cursor) is None
        assert tombstoned(db, account_id, cursor)
    # ...and the rollback undoes both together with the event.
    assert key_row(db, account_id) == wrapped
    assert not tombstoned(db, account_id)
    assert "Purged" not in topics_of(db, account_id)
    assert reads_in_full(accounts, account_id)


def test_a_failure_after_the_purged_insert_keeps_the_key(accounts: Accounts) -> None:
    db = accounts.database
    account_id = withdrawing_member(accounts)
    stored = stored_purge(accounts, account_id)

    class CrashError(Exception):
        pass

    with pytest.raises(CrashError), db.transaction(commit=True) as cursor:
        insert_stored_event(db, cursor, stored)
        assert key_row(db, account_id, cursor) is None
        raise CrashError
    assert key_row(db, account_id) is not None
    assert not tombstoned(db, account_id)
    assert topics_of(db, account_id)[-1] == "WithdrawalRequested"
    assert reads_in_full(accounts, account_id)


def test_a_conflict_later_in_the_same_save_keeps_the_key(accounts: Accounts) -> None:
    """Purged goes in first and fires the trigger; a later event of the same save conflicts."""
    db = accounts.database
    account_id = withdrawing_member(accounts)
    stored = stored_purge(accounts, account_id)
    [claim_id] = [
        n.originator_id
        for n in accounts.recorder.select_notifications(start=1, limit=1000)
        if n.topic.endswith("EmailClaim.Created")
    ]
    already_there = accounts.recorder.select_events(claim_id)[-1]
    with pytest.raises(IntegrityError):
        accounts.recorder.insert_events([stored, already_there])
    assert key_row(db, account_id) is not None
    assert not tombstoned(db, account_id)
    assert "Purged" not in topics_of(db, account_id)
    assert reads_in_full(accounts, account_id)


def test_committed_purge_destroys_the_key_with_it(accounts: Accounts) -> None:
    db = accounts.database
    account_id = withdrawing_member(accounts)
    stored = stored_purge(accounts, account_id)
    with db.transaction(commit=True) as cursor:
        insert_stored_event(db, cursor, stored)
    assert topics_of(db, account_id)[-1] == "Purged"
    assert key_row(db, account_id) is None
    assert tombstoned(db, account_id)
    assert accounts.vault.is_destroyed(account_id)
    assert not reads_in_full(accounts, account_id)


def test_the_recorders_own_insert_destroys_the_key(accounts: Accounts) -> None:
    db = accounts.database
    account_id = withdrawing_member(accounts)
    stored = stored_purge(accounts, account_id)
    accounts.recorder.insert_events([stored])
    assert key_row(db, account_id) is None
    assert tombstoned(db, account_id)
    account = accounts.repository.get(account_id)
    assert isinstance(account, Account)
    assert account.status is AccountStatus.PURGED
    assert not reads_in_full(accounts, account_id)


def test_the_applications_purge_destroys_the_key(accounts: Accounts) -> None:
    db = accounts.database
    account_id = withdrawing_member(accounts)
    assert reads_in_full(accounts, account_id)  # and the key is cached now
    assert accounts.purge(account_id)
    assert key_row(db, account_id) is None
    assert tombstoned(db, account_id)
    # No stale cache in the purging process.
    account = accounts.repository.get(account_id)
    assert isinstance(account, Account)
    assert account.email == REDACTED


# The tombstone.


def test_a_destroyed_key_cannot_come_back(accounts: Accounts) -> None:
    db = accounts.database
    account_id = withdrawing_member(accounts)
    accounts.purge(account_id)
    with pytest.raises(KeyDestroyedError) as raised:
        accounts.vault.create_key(account_id)
    assert raised.value.code == "key_destroyed"
    assert key_row(db, account_id) is None
    # Not even by raw SQL: the database itself refuses.
    with pytest.raises(DatabaseError, match="key_destroyed"), db.transaction() as cursor:
        cursor.execute(
            f"INSERT INTO {db.table('account_keys')} (account_id, wrapped_key) VALUES (%s, %s)",
            (db.id_param(account_id), b"\x00" * 60),
        )
    assert key_row(db, account_id) is None
    # Nor by registering a new account under the purged id.
    again = Account.register(
        email="someone@example.jp",
        display_name="Someone",
        consent_version="2026-04",
        account_id=account_id,
    )
    # The key is written with the Registered event, where the database refuses it.
    with pytest.raises(KeyDestroyedError):
        accounts.save(again)
    assert key_row(db, account_id) is None


def test_a_sealed_event_cannot_be_written_for_a_purged_account(accounts: Accounts) -> None:
    account_id = withdrawing_member(accounts)
    account = accounts.get_account(account_id)
    accounts.purge(account_id)
    # A stale in-memory copy from before the purge tries to write a personal field.
    account.status = AccountStatus.ACTIVE
    account.edit_preferences(job_title="Ghost")
    [edited] = account.collect_events()
    with pytest.raises(KeyDestroyedError):
        accounts.mapper.to_stored_event(edited)


# Backup restore: re-shredding.


def test_reshred_after_a_backup_restore(accounts: Accounts, settings: Settings) -> None:
    db = accounts.database
    account_id = withdrawing_member(accounts)
    kept_id = live_member(accounts, MEMBERS[1])
    with db.transaction(commit=False) as cursor:
        saved = cursor.execute(
            f"SELECT wrapped_key, created_at FROM {db.table('account_keys')} WHERE account_id = %s",
            (db.id_param(account_id),),
        ).fetchone()
    assert saved is not None
    assert accounts.purge(account_id)
    assert not reads_in_full(accounts, account_id)

    # A backup of the key table from before the purge comes back, without the tombstone.
    with db.transaction(commit=True) as cursor:
        cursor.execute(
            f"DELETE FROM {db.table('destroyed_keys')} WHERE account_id = %s",
            (db.id_param(account_id),),
        )
        cursor.execute(
            f"INSERT INTO {db.table('account_keys')} (account_id, wrapped_key, created_at) "
            "VALUES (%s, %s, %s)",
            (db.id_param(account_id), saved[0], saved[1]),
        )
    # The restore really did bring the personal values back: the danger is real.
    assert reads_in_full(accounts, account_id)

    assert accounts.vault.destroy_keys_of_purged_accounts() == 1
    assert key_row(db, account_id) is None
    assert tombstoned(db, account_id)
    assert not reads_in_full(accounts, account_id)
    with pytest.raises(KeyDestroyedError):
        accounts.vault.create_key(account_id)
    # A process that never cached anything agrees.
    other = Accounts(env=settings.application_env())
    try:
        account = other.repository.get(account_id)
        assert isinstance(account, Account)
        assert account.email == REDACTED
        assert account.withdrawal is not None
        assert account.withdrawal["comment"] == REDACTED
        assert account.withdrawal["reason"] == "other"
        assert other.get_account(kept_id).display_name == MEMBERS[1]["display_name"]
    finally:
        other.close()
    # Accounts that were never purged keep their keys; running it again changes nothing.
    assert key_row(db, kept_id) is not None
    assert accounts.vault.destroy_keys_of_purged_accounts() == 0
    assert accounts.get_account(kept_id).display_name == MEMBERS[1]["display_name"]


def test_the_claim_outlives_the_account_released(accounts: Accounts) -> None:
    account_id = withdrawing_member(accounts)
    accounts.purge(account_id)
    claims = [
        accounts.mapper.to_domain_event(n)
        for n in accounts.recorder.select_notifications(start=1, limit=1000)
        if "EmailClaim" in n.topic
    ]
    assert [type(e) for e in claims] == [
        EmailClaim.Created,
        EmailClaim.Claimed,
        EmailClaim.Released,
    ]
    assert all(e.originator_id != account_id for e in claims)
    # Held and released by the account's sealed holder, which names it in no form.
    assert claims[1].holder == claims[2].holder
    assert str(account_id) not in claims[1].holder and account_id.hex not in claims[1].holder


def test_after_purge_only_values_that_were_there_read_as_redacted(accounts: Accounts) -> None:
    account_id = accounts.register(
        email="partial@example.jp", display_name="Partial", consent_version="v1"
    )
    accounts.edit_preferences(account_id, job_title="Engineer")
    accounts.request_withdrawal(account_id, reason="other")
    accounts.purge(account_id)
    events = [
        accounts.mapper.to_domain_event(stored)
        for stored in accounts.events.recorder.select_events(account_id)
    ]
    registered, edited = events[0], events[1]
    assert isinstance(registered, Account.Registered)
    assert isinstance(edited, Account.PreferencesEdited)
    assert registered.email == REDACTED
    assert registered.phone is None  # never given, so nothing to redact
    assert edited.changed_parts == ["job_title"]
    assert edited.work_history is None


def test_sealed_values_cannot_be_moved_to_another_event(accounts: Accounts) -> None:
    account_id = accounts.register(
        email="swap@example.jp", display_name="Swap", consent_version="v1"
    )
    accounts.edit_preferences(account_id, job_title="First")
    accounts.edit_preferences(account_id, job_title="Second")
    first, second = accounts.events.recorder.select_events(account_id)[1:3]
    moved = type(second)(
        originator_id=second.originator_id,
        originator_version=second.originator_version,
        topic=second.topic,
        state=first.state,
    )
    with pytest.raises(MapperDeserialisationError, match="fail authentication"):
        accounts.mapper.to_domain_event(moved)


def test_a_purge_by_another_process_is_seen_at_once_despite_the_key_cache(
    accounts: Accounts, settings: Settings
) -> None:
    account_id = accounts.register(
        email="elsewhere@example.jp", display_name="Elsewhere", consent_version="v1"
    )
    accounts.request_withdrawal(account_id, reason="other")
    assert accounts.load_for_audit(account_id).email == "elsewhere@example.jp"  # key now cached
    other_process = Accounts(env=settings.application_env())
    try:
        other_process.purge(account_id)
    finally:
        other_process.close()
    account = accounts.load_for_audit(account_id)
    assert account.status is AccountStatus.PURGED
    assert account.email == REDACTED


def test_prefetch_reads_a_batch_of_keys_in_one_query(
    accounts: Accounts, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [
        accounts.register(email=f"batch{n}@example.jp", display_name="B", consent_version="v1")
        for n in range(3)
    ]
    accounts.request_withdrawal(ids[0], reason="other")
    accounts.purge(ids[0])
    fresh = Accounts(env=settings.application_env())  # nothing cached yet
    try:
        queries = 0
        transaction = fresh.vault.database.transaction

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal queries
            queries += 1
            return transaction(*args, **kwargs)

        monkeypatch.setattr(fresh.vault.database, "transaction", counting)
        keys = fresh.vault.prefetch(ids)
        assert queries == 1
        assert keys[ids[0]] is None  # destroyed with Purged
        assert all(isinstance(keys[i], bytes) for i in ids[1:])
        assert [fresh.vault.find_key(i) for i in ids] == [keys[i] for i in ids]
        assert queries == 1  # served from the cache
    finally:
        fresh.close()
