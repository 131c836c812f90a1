"""Erasure evidence at the service layer: the proof refuses values that are not digests, and
names that are not services or schemas, before it opens a store; it reaches only stores that
exist (and creates none) and closes what it opened; reshred re-signs a receipt the restore lost
and counts a forged one; receipts are found by either id and checked."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from uuid import UUID

import pytest

from lifecycle.application import Accounts
from lifecycle.audit.proof import value_digest
from lifecycle.audit.receipt import RECEIPTS_TABLE
from lifecycle.bootstrap import (
    build_erasure,
    erasure_evidence,
    erasure_status_query,
    existing_service_database,
    receipts_of,
)
from lifecycle.erasure.process import Confirmation
from lifecycle.erasure.status import CONFIRMED
from lifecycle.errors import InvalidCommandError, NotFoundError
from lifecycle.services.erasure_evidence import Broker, ErasureEvidence
from lifecycle.settings import Settings
from lifecycle.storage import Database
from schemas.contract import ERASING_SERVICES, erasure_receipt_id

EMAIL = "ottoline.brackwater@evidence.example"


def purged_member(accounts: Accounts, settings: Settings) -> UUID:
    process = build_erasure(accounts, settings)
    account_id = accounts.register(
        email=f"{uuid.uuid4().hex[:6]}.{EMAIL}", display_name="Ottoline", consent_version="v1"
    )
    accounts.request_withdrawal(account_id, reason="hired_elsewhere")
    for service in ERASING_SERVICES:
        process.handle(Confirmation(account_id, service, CONFIRMED, 1, f"c-{service}"))
    return account_id


class Opened:
    """The stores the proof asked for, each opened as the CLI's builder opens it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.asked: list[str] = []
        self.databases: list[Database] = []

    def __call__(self, name: str, schema: str | None) -> Database | None:
        self.asked.append(name)
        found = existing_service_database(self.settings, name, schema)
        if found is not None:
            self.databases.append(found)
        return found


def evidence_with(accounts: Accounts, settings: Settings, stores: Opened) -> ErasureEvidence:
    return ErasureEvidence(
        accounts,
        receipts_of(build_erasure(accounts, settings)),
        erasure_status_query(accounts, settings),
        stores,
        Broker(settings.topics),
    )


@pytest.mark.parametrize(
    ("digests", "schemas"),
    [
        ([], {}),
        (["not-a-digest"], {}),
        (["z" * 64], {}),
        ([value_digest(EMAIL)], {"billing": "billing"}),
        ([value_digest(EMAIL)], {"scout": "scout; DROP SCHEMA public"}),
    ],
)
def test_the_proof_refuses_what_is_not_a_digest_or_a_service_before_opening_a_store(
    accounts: Accounts, settings: Settings, digests: list[str], schemas: dict[str, str]
) -> None:
    stores = Opened(settings)
    with pytest.raises(InvalidCommandError):
        evidence_with(accounts, settings, stores).prove(uuid.uuid4(), digests, schemas)
    assert stores.asked == []


def test_the_proof_reaches_every_existing_store_and_closes_it(
    accounts: Accounts, settings: Settings
) -> None:
    account_id = purged_member(accounts, settings)
    stores = Opened(settings)

    report = evidence_with(accounts, settings, stores).prove(
        account_id, [value_digest(EMAIL).upper() + "\n"]
    )

    assert stores.asked == list(ERASING_SERVICES)
    assert report["erased"] is True, report
    assert report["values_searched"] == 1
    reached = {p["owner"] for p in report["places"] if p["kind"] == "table"}
    if settings.is_embedded:  # the session's template has every service's store
        assert reached == {"lifecycle", *ERASING_SERVICES}
    assert report["schemas_not_reached"] == sorted(set(ERASING_SERVICES) - reached)
    for database in stores.databases:  # closed by the proof: a closed pool refuses work
        with pytest.raises(Exception):  # noqa: B017 (each backend's own error)
            database.table_names()


def test_looking_for_a_store_that_does_not_exist_creates_none(settings: Settings) -> None:
    if settings.is_embedded:
        elsewhere = Path(settings.database_url.removeprefix("sqlite:///")).parent / "elsewhere"
        moved = settings.model_copy(
            update={"database_url": f"sqlite:///{elsewhere / 'lifecycle.sqlite3'}"}
        )
        assert existing_service_database(moved, "scout") is None
        assert not (elsewhere / "scout.sqlite3").exists()
        return
    schema = f"absent_{uuid.uuid4().hex[:8]}"
    assert existing_service_database(settings, "scout", schema) is None
    probe = Database.open(settings.database_url, schema)
    try:
        assert not probe.schema_exists()
    finally:
        probe.close()


def test_reshred_signs_again_a_receipt_the_restore_lost_and_counts_a_forged_one(
    accounts: Accounts, settings: Settings, tmp_path: Path
) -> None:
    account_id = purged_member(accounts, settings)
    evidence = erasure_evidence(accounts, settings)
    kept = evidence.receipt_of(account_id)
    database = accounts.database
    with database.transaction() as cursor:  # what a restore of an older backup looks like
        cursor.execute(f"DELETE FROM {database.table(RECEIPTS_TABLE)}")
    forged = {**kept, "withdrawal_reason": "other"}
    (tmp_path / "forged.json").write_text(json.dumps(forged))

    done = evidence.reshred([tmp_path / "forged.json"])

    assert (done.purges_recorded_again, done.receipts_issued_again) == (0, 1)
    assert done.receipts_refused == 1
    again = evidence.receipt(erasure_receipt_id(account_id))
    assert again["receipt_id"] == kept["receipt_id"]
    assert evidence.verify_receipt(again)["ok"] is True
    assert evidence.verify_receipt(forged)["ok"] is False


def test_a_receipt_is_found_by_its_id_or_its_accounts_and_its_key_is_published(
    accounts: Accounts, settings: Settings
) -> None:
    account_id = purged_member(accounts, settings)
    evidence = erasure_evidence(accounts, settings)

    by_account = evidence.receipt_of(account_id)
    assert evidence.receipt(erasure_receipt_id(account_id)) == by_account
    assert evidence.verify_receipt(by_account)["ok"] is True
    signed_with = by_account["signature"]["key_id"]
    assert signed_with in {key["key_id"] for key in evidence.receipt_key()["keys"]}
    for unknown in (evidence.receipt, evidence.receipt_of):
        with pytest.raises(NotFoundError):
            unknown(uuid.uuid4())
    with pytest.raises(NotFoundError):
        evidence.receipt(account_id)  # an account's id is not its receipt's
