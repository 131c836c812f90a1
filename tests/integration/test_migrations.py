"""Versioned migrations: recorded, idempotent, checked at start; no constructor runs DDL; a
newer schema is refused only after a contracting migration; the shredding trigger survives
renaming the `Purged` class."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from consumers import chat, mail, scout
from consumers.mailer import DiscardingMailer
from consumers.migrations import SERVICES, kit_component
from consumers.store import ConsumerStore, open_database
from lifecycle import event_names
from lifecycle.account_terms import AccountStatus
from lifecycle.application import Accounts
from lifecycle.audit.receipt import Receipts
from lifecycle.bootstrap import (
    build_accounts,
    lifecycle_components,
    migrate_lifecycle,
    service_keyring,
)
from lifecycle.crypto import KEYS_TABLE, new_master_key
from lifecycle.erasure.process import ErasureProcess
from lifecycle.errors import StartupError
from lifecycle.migrations import LIFECYCLE
from lifecycle.migrator import (
    Component,
    Migration,
    SchemaVersionError,
    check,
    migrate,
    states,
)
from lifecycle.settings import Settings
from lifecycle.storage import Cursor, Database
from projections.registry import READ_MODELS
from schemas.contract import TopicNames

TOPICS = TopicNames()
MEMBER = {"email": "rename.me@example.jp", "display_name": "Rename Me", "consent_version": "v1"}


@pytest.fixture
def fresh(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings on a database nothing has touched yet (no migration)."""
    if backend == "sqlite":
        return Settings(
            database_url=f"sqlite:///{tmp_path / 'fresh.sqlite3'}",
            kafka_bootstrap=None,
            master_key=new_master_key(),
        )
    schema: str = request.getfixturevalue("pg_schema")
    return Settings(
        database_url=str(request.getfixturevalue("postgres_url")),
        database_schema=schema,
        kafka_bootstrap=None,
        master_key=new_master_key(),
    )


@pytest.fixture
def database(fresh: Settings) -> Iterator[Database]:
    opened = Database.open(fresh.database_url, fresh.database_schema, application_name="Accounts")
    yield opened
    opened.close()


def tables(database: Database) -> set[str]:
    with database.transaction(commit=False) as cursor:
        if database.dialect.name == "postgres":
            rows = cursor.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (database.schema,)
            ).fetchall()
        else:
            rows = cursor.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%%'"
            ).fetchall()
    return {str(row[0]) for row in rows}


def test_start_up_on_an_unmigrated_database_fails_fast_naming_the_command(fresh: Settings) -> None:
    with pytest.raises(StartupError) as raised:
        build_accounts(fresh)
    detail = raised.value.detail or ""
    assert "\n" not in detail
    assert "at version 0" in detail and "run `lifecycle migrate`" in detail


def test_no_constructor_runs_ddl(fresh: Settings, database: Database) -> None:
    accounts = Accounts(env=fresh.application_env())
    try:
        process = ErasureProcess(accounts)
        Receipts(process)
        for model_class in READ_MODELS.values():
            model_class(accounts.database)
        ConsumerStore(database)
        ConsumerStore(database, table_prefix="erasure_")
        scout.ScoutHandler(database, TOPICS)
        chat.ChatHandler(database, TOPICS, keyring=service_keyring(fresh, "chat"))
        mail.MailHandler(
            database, TOPICS, DiscardingMailer(), keyring=service_keyring(fresh, "mail")
        )
    finally:
        accounts.close()
    assert tables(database) == set()


def test_migrate_applies_each_component_once_and_records_it(
    fresh: Settings, database: Database
) -> None:
    first = migrate_lifecycle(fresh)
    assert [(a.component, a.version) for a in first] == [
        ("lifecycle", 1),
        ("lifecycle", 2),
        ("lifecycle", 3),
        ("lifecycle", 4),
        *[("consumer-kit:erasure_", v) for v in range(1, kit_component().latest + 1)],
        ("read-models", 1),
        ("data_export", 1),
        ("data_export", 2),
        *[("consumer-kit:data_export_", v) for v in range(1, kit_component().latest + 1)],
    ]
    assert migrate_lifecycle(fresh) == []
    assert {name: state.version for name, state in states(database).items()} == {
        "lifecycle": LIFECYCLE.latest,
        "consumer-kit:erasure_": kit_component().latest,
        "read-models": 1,
        "data_export": 2,
        "consumer-kit:data_export_": kit_component().latest,
    }
    check(database, lifecycle_components())
    build_accounts(fresh).close()
    assert {"schema_migrations", KEYS_TABLE, "destroyed_keys", "relay_position"} <= tables(database)


def test_each_reference_service_store_migrates_in_its_own_schema(
    fresh: Settings, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    for name, component in SERVICES.items():
        if backend == "postgres":
            store = open_database(fresh.database_url, f"{fresh.database_schema}_{name}")
        else:
            store = open_database(f"sqlite:///{tmp_path / f'{name}.sqlite3'}", name)
        try:
            with pytest.raises(SchemaVersionError, match="run `lifecycle migrate`"):
                check(store, [kit_component(), component])
            applied = migrate(store, [kit_component(), component])
            assert [a.component for a in applied] == [
                *["consumer-kit"] * kit_component().latest,
                *[name] * component.latest,
            ]
            check(store, [kit_component(), component])
        finally:
            store.close()
            if backend == "postgres":
                url = str(request.getfixturevalue("postgres_url"))
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {fresh.database_schema}_{name} CASCADE")


def _add_column(cursor: Cursor, db: Database) -> None:
    cursor.execute(f"ALTER TABLE {db.table('relay_position')} ADD COLUMN note TEXT")


def _drop_column(cursor: Cursor, db: Database) -> None:
    cursor.execute(f"ALTER TABLE {db.table('relay_position')} DROP COLUMN note")


def test_the_previous_release_keeps_working_after_expanding_and_refuses_after_contracting(
    fresh: Settings, database: Database
) -> None:
    """Release N+1 adds (expand): release N still starts. Release N+2 removes what N used
    (contract): release N refuses with one line, N+2 starts."""
    migrate_lifecycle(fresh)
    now = LIFECYCLE.latest
    expand = Migration(now + 1, "relay note", _add_column)
    contract = Migration(now + 2, "relay note gone", _drop_column, contracts=True)
    next_release = Component(LIFECYCLE.name, (*LIFECYCLE.migrations, expand))
    after_next = Component(LIFECYCLE.name, (*next_release.migrations, contract))

    with pytest.raises(SchemaVersionError, match=f"at version {now}, this release needs {now + 1}"):
        check(database, [next_release])  # the new release before `lifecycle migrate`
    migrate(database, [next_release])
    check(database, [LIFECYCLE])  # the previous release, during the rolling upgrade
    build_accounts(fresh).close()

    migrate(database, [after_next])
    with pytest.raises(SchemaVersionError) as raised:
        check(database, [LIFECYCLE])
    assert f"needs code of version {now + 2}" in str(raised.value)
    assert "\n" not in str(raised.value)
    check(database, [after_next])


def test_migrate_on_the_command_line_reports_and_is_idempotent(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")},
        "LIFECYCLE_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'lifecycle.sqlite3'}",
    }

    def lifecycle(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lifecycle", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    refused = lifecycle("audit", "replay")
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0
    assert "run `lifecycle migrate`" in refused.stderr

    first = lifecycle("migrate")
    assert first.returncode == 0, first.stderr
    assert "applied lifecycle 1: " in first.stdout
    # The erasure consumer's kit tables, the read models, the data exports and their intake's.
    applied_first = LIFECYCLE.latest + 2 * kit_component().latest + 3
    assert f"lifecycle database: up to date ({applied_first} migration(s) applied)" in first.stdout
    for name, component in SERVICES.items():  # Kafka off: `serve` runs them, migrated too
        applied = kit_component().latest + component.latest  # the kit's, the service's own
        assert f"{name} store: up to date ({applied} migration(s) applied)" in first.stdout
    again = lifecycle("migrate")
    assert again.returncode == 0
    assert "applied" not in again.stdout.replace("nothing to apply", "")
    assert again.stdout.count("up to date (nothing to apply)") == 4
    assert lifecycle("audit", "replay").returncode == 0


# Renaming the Purged class on a database made before the rename

RENAMED = r"""
import json, sys, types, uuid, inspect
import lifecycle
source = inspect.getsource(__import__("lifecycle.domain", fromlist=["x"]))
del sys.modules["lifecycle.domain"]
# The rename: Purged is now Erased, in a module of another name.
source = source.replace("class Purged(Event)", "class Erased(Event)")
source = source.replace("self.Purged", "self.Erased")
source = source.replace("Account.Purged()", "Account.Erased()")
from eventsourcing import utils
utils.clear_topic_cache()
utils._type_cache.clear()
moved = types.ModuleType("lifecycle.members")
sys.modules["lifecycle.members"] = sys.modules["lifecycle.domain"] = moved
exec(compile(source, "lifecycle/members.py", "exec"), moved.__dict__)
lifecycle.domain = moved
Erased = moved.Account.Erased
assert not hasattr(moved.Account, "Purged")
assert f"{Erased.__module__}:{Erased.__qualname__}" == "lifecycle.members:Account.Erased"

from lifecycle.application import Accounts
from lifecycle.event_names import PURGED
settings = json.loads(sys.stdin.read())
accounts = Accounts(env=settings["env"])
account_id = uuid.UUID(settings["account_id"])
assert accounts.get_account(account_id).status == "withdrawing"  # old events still resolve
accounts.purge(account_id)
stored = accounts.recorder.select_events(account_id)
print(json.dumps({"last_topic": stored[-1].topic, "purged_name": PURGED}))
accounts.close()
"""


def test_renaming_and_moving_the_purged_class_still_destroys_the_key(settings: Settings) -> None:
    """The database (and its trigger) were made before the rename; the renamed class writes
    the stable name, so the trigger still fires and the key is gone."""
    accounts = Accounts(env=settings.application_env())
    try:
        account_id = accounts.register(**MEMBER)
        accounts.request_withdrawal(account_id, reason="hired_elsewhere")
        assert accounts.vault.find_key(account_id) is not None
    finally:
        accounts.close()
    payload = json.dumps({"env": settings.application_env(), "account_id": str(account_id)})
    renamed = subprocess.run(
        [sys.executable, "-c", RENAMED],
        input=payload,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert renamed.returncode == 0, renamed.stderr
    result = json.loads(renamed.stdout.strip().splitlines()[-1])
    assert result["last_topic"] == result["purged_name"] == event_names.PURGED

    after = Accounts(env=settings.application_env())  # today's code, nothing cached
    try:
        assert after.vault.find_key(account_id) is None
        with after.database.transaction(commit=False) as cursor:
            row = cursor.execute(
                f"SELECT count(*) FROM {after.database.table(KEYS_TABLE)} WHERE account_id = %s",
                (after.database.id_param(account_id),),
            ).fetchone()
        assert row == (0,)
        account = after.load_for_audit(account_id)
        assert account.status is AccountStatus.PURGED
        assert account.email == "[redacted]"
    finally:
        after.close()


def test_every_stored_name_is_declared_once_and_resolves_to_its_class() -> None:
    from eventsourcing.utils import get_topic, resolve_topic

    from lifecycle.domain import Account
    from lifecycle.email_claim import EmailClaim

    classes = [
        Account,
        EmailClaim,
        *(getattr(Account, n) for n in ("Registered", "PreferencesEdited", "ScoutReceived")),
        *(getattr(Account, n) for n in ("GiftClaimed", "WithdrawalRequested", "Purged")),
        EmailClaim.Created,
        EmailClaim.Claimed,
        EmailClaim.Released,
    ]
    names = [get_topic(cls) for cls in classes]
    assert len(set(names)) == len(names)
    for cls, name in zip(classes, names, strict=True):
        assert name == cls.__dict__["TOPIC"]
        assert resolve_topic(name) is cls
    assert tuple(names[2:8]) == event_names.ACCOUNT_EVENTS
