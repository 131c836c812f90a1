"""Signed erasure receipts on SQLite and PostgreSQL: issued at purge, verified by the CLI; a
tampered receipt or a chain edited with SQL fails verification."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from typer.testing import CliRunner

from lifecycle.application import Accounts
from lifecycle.audit.receipt import Receipts, ReceiptSigner, signature_holds, verify_receipt
from lifecycle.bootstrap import build_erasure, receipts_of
from lifecycle.cli import cli
from lifecycle.crypto import decode_master_key
from lifecycle.erasure.process import Confirmation, ErasureProcess
from lifecycle.erasure.receipt_lane import ReceiptLane
from lifecycle.erasure.status import CONFIRMED
from lifecycle.kafka.admin import TopicSettings
from lifecycle.keyring import LEGACY_INFO, derive
from lifecycle.settings import Settings
from projections.hashchain import HashChain
from projections.runner import Projector
from schemas.contract import erasure_receipt_id

EMAIL_TAG = "receipt.probe"
NAME = "Quillon Receiptmoor"
COUNTS = {"scout": 3, "chat": 0, "mail": 2}


def purged_member(process: ErasureProcess) -> UUID:
    accounts = process.accounts
    account_id = accounts.register(
        email=f"{EMAIL_TAG}.{uuid.uuid4().hex[:6]}@example.jp",
        display_name=NAME,
        phone="+81-90-1234-5678",
        consent_version="v1",
    )
    accounts.request_withdrawal(account_id, reason="hired_elsewhere", comment="Receiptmoor out")
    for service, rows in COUNTS.items():
        process.handle(Confirmation(account_id, service, CONFIRMED, rows, f"c-{service}"))
    return account_id


def catch_up_chain(accounts: Accounts) -> HashChain:
    chain = HashChain(accounts.database)
    chain.create()
    Projector(accounts, chain).catch_up()
    return chain


@pytest.fixture
def process(accounts: Accounts, settings: Settings) -> ErasureProcess:
    return build_erasure(accounts, settings)


@pytest.fixture
def receipts(process: ErasureProcess) -> Receipts:
    return receipts_of(process)


def test_purge_issues_one_signed_receipt_of_ids_times_and_counts(
    accounts: Accounts, process: ErasureProcess, receipts: Receipts, settings: Settings
) -> None:
    account_id = purged_member(process)

    receipt = receipts.get(erasure_receipt_id(account_id))

    assert receipt is not None
    account = accounts.load_for_audit(account_id)
    assert account.purged_at is not None and account.withdrawn_at is not None
    assert receipt["account_id"] == str(account_id)
    assert receipt["receipt_id"] == str(erasure_receipt_id(account_id))
    assert _time(receipt["purged_at"]) == account.purged_at
    assert _time(receipt["requested_at"]) == account.withdrawn_at
    assert {s: v["rows_removed"] for s, v in receipt["services"].items()} == COUNTS
    assert {v["outcome"] for v in receipt["services"].values()} == {CONFIRMED}
    assert receipt["key"]["destroyed"] is True and receipt["key"]["destroyed_at"]
    # The profile topic's bound: purged_at + segment.ms + max.compaction.lag.ms.
    bound = TopicSettings()
    expected = account.purged_at + timedelta(
        milliseconds=bound.profile_segment_ms + bound.profile_max_compaction_lag_ms
    )
    assert _time(receipt["profile_topic"]["last_copy_gone_by"]) == expected
    # Nothing in it identifies the person.
    text = json.dumps(receipt)
    for value in (EMAIL_TAG, NAME, "Receiptmoor", "1234-5678"):
        assert value not in text
    # Signed by the keyring's signing key (version 1: derived from the master key as before,
    # so receipts of earlier releases still verify); the link is the Purged event's link.
    assert settings.master_key is not None
    signer = ReceiptSigner(
        derive(decode_master_key(settings.master_key.get_secret_value()), LEGACY_INFO["signing"])
    )
    assert receipt["signature"]["key_id"] == signer.key_id
    assert signature_holds(receipt, signer.public_bytes)
    # The bound: the master key alone cannot be rotated away, so no date can be promised.
    assert receipt["key"]["wrapped_under"] == 1
    assert receipt["key"]["unrecoverable_by"] is None
    chain = catch_up_chain(accounts)  # the chain lagged at issue: the link was recomputed
    with accounts.database.transaction(commit=False) as cursor:
        row = cursor.execute(
            f"SELECT originator_id, originator_version, link FROM {chain.table('hash_chain')} "
            "WHERE notification_id = %s",
            (receipt["hash_chain"]["position"],),
        ).fetchone()
    assert row is not None
    assert (str(row[0]), int(row[1])) == (str(account_id), account.version)
    assert row[2] == receipt["hash_chain"]["link"]
    assert verify_receipt(receipt, receipts)["ok"] is True


def test_a_repeated_confirmation_keeps_the_receipt_and_mends_a_lost_one(
    process: ErasureProcess, receipts: Receipts
) -> None:
    account_id = purged_member(process)
    first = receipts.get(erasure_receipt_id(account_id))
    repeat = Confirmation(account_id, "mail", CONFIRMED, 2, "c-mail")

    process.handle(repeat)
    assert receipts.get(erasure_receipt_id(account_id)) == first

    db = receipts.database
    with db.transaction() as cursor:
        cursor.execute(f"DELETE FROM {receipts.table}")  # lost to a crash after the purge
    process.handle(repeat)
    mended = receipts.get(erasure_receipt_id(account_id))
    assert mended is not None and mended["hash_chain"] == (first or {})["hash_chain"]
    assert verify_receipt(mended, receipts)["ok"] is True


def test_no_receipt_before_the_purge(process: ErasureProcess, receipts: Receipts) -> None:
    accounts = process.accounts
    account_id = accounts.register(
        email=f"early.{uuid.uuid4().hex[:6]}@example.jp", display_name="E", consent_version="v1"
    )
    accounts.request_withdrawal(account_id, reason="other")
    process.handle(Confirmation(account_id, "scout", CONFIRMED, 1, "c-1"))

    assert receipts.issue(account_id) is None
    assert receipts.get(erasure_receipt_id(account_id)) is None


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r: r["services"]["scout"].update(rows_removed=4),
        lambda r: r.update(purged_at="2020-01-01T00:00:00Z"),
        lambda r: r["hash_chain"].update(link="0" * 64),
        lambda r: r["signature"].update(value="AAAA"),
    ],
    ids=["counts", "time", "link", "signature"],
)
def test_a_tampered_receipt_fails_verification(
    process: ErasureProcess, receipts: Receipts, tamper: Any
) -> None:
    receipt = receipts.get(erasure_receipt_id(purged_member(process)))
    assert receipt is not None
    tamper(receipt)

    result = verify_receipt(receipt, receipts)

    assert result["ok"] is False
    assert "signature does not verify" in " ".join(result["problems"])


def test_an_event_edited_with_sql_breaks_the_receipt(
    accounts: Accounts, process: ErasureProcess, receipts: Receipts
) -> None:
    other = purged_member(process)  # an earlier erasure, chained before the one checked
    account_id = purged_member(process)
    receipt = receipts.get(erasure_receipt_id(account_id))
    assert receipt is not None
    # Unchained yet: the receipt is checked against links recomputed from the log.
    assert verify_receipt(receipt, receipts)["ok"] is True
    target = accounts.recorder.select_events(other)[1]  # its WithdrawalRequested
    db = accounts.database
    with db.transaction() as cursor:
        cursor.execute(
            f"UPDATE {db.events_table} SET state = %s "
            "WHERE originator_id = %s AND originator_version = %s",
            (
                bytes(target.state).replace(b"hired_elsewhere", b"hard_to_use"),
                db.id_param(other),
                target.originator_version,
            ),
        )

    result = verify_receipt(receipt, receipts)

    assert result["ok"] is False
    assert "differs from the receipt" in " ".join(result["problems"])


def test_a_chain_row_edited_with_sql_breaks_the_receipt(
    accounts: Accounts, process: ErasureProcess, receipts: Receipts
) -> None:
    account_id = purged_member(process)
    receipt = receipts.get(erasure_receipt_id(account_id))
    assert receipt is not None
    chain = catch_up_chain(accounts)
    assert verify_receipt(receipt, receipts)["ok"] is True
    db = accounts.database
    with db.transaction() as cursor:
        cursor.execute(
            f"UPDATE {chain.table('hash_chain')} SET link = %s WHERE notification_id = %s",
            ("f" * 64, receipt["hash_chain"]["position"]),
        )

    result = verify_receipt(receipt, receipts)

    assert result["ok"] is False
    assert any("hash chain broken" in problem for problem in result["problems"])


def test_the_cli_verifies_by_id_and_refuses_a_tampered_file(
    settings: Settings, process: ErasureProcess, receipts: Receipts, tmp_path: Path
) -> None:
    account_id = purged_member(process)
    assert settings.master_key is not None
    env = {
        "LIFECYCLE_DATABASE_URL": settings.database_url,
        "LIFECYCLE_DATABASE_SCHEMA": settings.database_schema,
        "LIFECYCLE_MASTER_KEY": settings.master_key.get_secret_value(),
        "LIFECYCLE_LOG_FORMAT": "json",
        "LIFECYCLE_LOG_LEVEL": "WARNING",
    }
    runner = CliRunner()

    by_id = runner.invoke(
        cli, ["audit", "verify-receipt", str(erasure_receipt_id(account_id))], env=env
    )
    by_account = runner.invoke(cli, ["audit", "verify-receipt", str(account_id)], env=env)
    receipt = receipts.get(erasure_receipt_id(account_id))
    assert receipt is not None
    receipt["services"]["chat"]["rows_removed"] = 7
    tampered = tmp_path / "receipt.json"
    tampered.write_text(json.dumps(receipt))
    refused = runner.invoke(cli, ["audit", "verify-receipt", str(tampered)], env=env)

    assert by_id.exit_code == 0, by_id.stderr
    assert json.loads(by_id.stdout)["ok"] is True
    assert by_account.exit_code == 0, by_account.stderr
    assert refused.exit_code == 1
    assert "signature does not verify" in refused.stderr


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_the_receipt_lane_issues_off_the_loop_and_at_start_what_a_crash_left_owed(
    process: ErasureProcess, receipts: Receipts
) -> None:
    lost = purged_member(process)
    db = receipts.database
    with db.transaction() as cursor:
        cursor.execute(f"DELETE FROM {receipts.table}")  # the crash: purged, no receipt
    assert receipts.owed() == [lost]
    lane = ReceiptLane(receipts, receipts.owed)
    process.receipts = lane
    queued = purged_member(process)  # handed to the lane, not issued in the loop
    assert receipts.get(erasure_receipt_id(queued)) is None

    stop = threading.Event()
    runner = threading.Thread(target=lane.run, args=(stop,))
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while receipts.owed() and time.monotonic() < deadline:
            stop.wait(0.05)
    finally:
        stop.set()
        runner.join(timeout=30)

    assert receipts.owed() == []
    for account_id in (lost, queued):
        receipt = receipts.get(erasure_receipt_id(account_id))
        assert receipt is not None and verify_receipt(receipt, receipts)["ok"] is True
