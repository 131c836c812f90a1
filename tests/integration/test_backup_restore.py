"""A restored pre-purge backup brings a key back; `lifecycle audit reshred` shreds it again and
brings the account back to `Purged`, whatever state the backup caught it in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from support import TOKENS, auth

from lifecycle.account_terms import REDACTED, AccountStatus
from lifecycle.api import create_app
from lifecycle.application import Accounts, KnownErasure
from lifecycle.audit.receipt import ReceiptSigner, verify_receipt
from lifecycle.audit.replay import replay
from lifecycle.bootstrap import build_erasure, migrate_lifecycle, receipts_of
from lifecycle.crypto import KEYS_TABLE, keyed_id, new_master_key
from lifecycle.email_claim import EmailClaim, legacy_holder
from lifecycle.kafka.admin import ensure_topics
from lifecycle.kafka.producer import KafkaPublisher
from lifecycle.settings import Settings, token_digest
from schemas.contract import PurgedV1, encode_record, erasure_receipt_id

MEMBER = {
    "email": "restore.probe.7731@example.jp",
    "display_name": "Restoro Probeyama",
    "phone": "+81-90-7731-0042",
    "consent_version": "v1",
}


def dump_schema(postgres_url: str, schema: str, target: Path) -> None:
    subprocess.run(
        ["pg_dump", "--no-owner", f"--schema={schema}", f"--file={target}", postgres_url],
        check=True,
    )


def restore_schema(postgres_url: str, schema: str, source: Path) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
    subprocess.run(
        ["psql", "--quiet", "-v", "ON_ERROR_STOP=1", f"--file={source}", postgres_url],
        check=True,
        capture_output=True,
    )


def reshred(
    env: dict[str, str], command: str = "reshred", *options: str
) -> subprocess.CompletedProcess[str]:
    """`lifecycle audit reshred` (or another audit command; `migrate` is the top-level one)."""
    audit = ["audit"] if command != "migrate" else []
    return subprocess.run(
        [sys.executable, "-m", "lifecycle", *audit, command, *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def fresh_read(settings: Settings, account_id: uuid.UUID) -> tuple[str, AccountStatus]:
    """Read through a new application, so no key cache hides what the database holds."""
    app = Accounts(env=settings.application_env())
    try:
        account = app.load_for_audit(account_id)
        return account.email, account.status
    finally:
        app.close()


def keep_receipt(accounts: Accounts, settings: Settings, account_id: uuid.UUID, path: Path) -> None:
    """The signed receipt of a purge, archived outside the database (what outlives a restore)."""
    receipt = receipts_of(build_erasure(accounts, settings)).issue(account_id)
    assert receipt is not None
    with path.open("a") as archive:
        archive.write(json.dumps(receipt) + "\n")


def test_reshred_after_restoring_a_dump_taken_before_the_purge(
    postgres_url: str, pg_schema: str, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=postgres_url, database_schema=pg_schema, master_key=new_master_key()
    )
    migrate_lifecycle(settings)
    accounts = Accounts(env=settings.application_env())
    archive = tmp_path / "receipts.jsonl"
    try:
        account_id = accounts.register(**MEMBER)
        accounts.request_withdrawal(account_id, reason="hired_elsewhere")
        dump = tmp_path / "before-purge.sql"
        dump_schema(postgres_url, pg_schema, dump)

        accounts.purge(account_id)
        keep_receipt(accounts, settings, account_id, archive)
    finally:
        accounts.close()
    assert fresh_read(settings, account_id) == (REDACTED, AccountStatus.PURGED)

    restore_schema(postgres_url, pg_schema, dump)
    assert fresh_read(settings, account_id) == (MEMBER["email"], AccountStatus.WITHDRAWING)

    env = cli_env(settings)
    result = reshred(env, "reshred", "--receipts", str(archive))
    assert result.returncode == 0, result.stderr
    assert "purges recorded again: 1, keys destroyed again: 1" in result.stdout
    assert MEMBER["email"] not in result.stdout + result.stderr
    assert fresh_read(settings, account_id) == (REDACTED, AccountStatus.PURGED)

    again = reshred(env, "reshred", "--receipts", str(tmp_path))  # the directory works too
    assert "purges recorded again: 0, keys destroyed again: 0" in again.stdout


def test_reshred_on_the_embedded_default_reports_nothing_to_do(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LIFECYCLE_DATABASE_URL": f"sqlite:///{tmp_path / 'embedded.sqlite3'}",
        "LIFECYCLE_LOG_FORMAT": "json",
    }
    env.pop("LIFECYCLE_KAFKA_BOOTSTRAP", None)
    assert reshred(env, "migrate").returncode == 0
    result = reshred(env)
    assert result.returncode == 0, result.stderr
    assert "purges recorded again: 0, keys destroyed again: 0" in result.stdout


LIVE = {
    "email": "restore.live.5520@example.jp",
    "display_name": "Livia Keepsake",
    "consent_version": "v1",
}
# Every member route, as the service calls it; each answers 410 for a purged account.
MEMBER_ROUTES = [
    ("GET", "/v1/accounts/{id}", None),
    ("GET", "/v1/accounts/{id}/withdrawal-preview", None),
    ("PATCH", "/v1/accounts/{id}/preferences", {"notifications": {"scouts": False}}),
    ("POST", "/v1/accounts/{id}/scouts", {"scout_id": "s-9", "company_id": "acme", "job_id": "j"}),
    ("POST", "/v1/accounts/{id}/gift-claim", {"company_id": "acme", "start_date": "2026-12-01"}),
    ("POST", "/v1/accounts/{id}/withdrawal", {"reason": "other"}),
]


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "LIFECYCLE_DATABASE_URL": settings.database_url,
        "LIFECYCLE_DATABASE_SCHEMA": settings.database_schema,
        "LIFECYCLE_MASTER_KEY": settings.resolved_master_key(),
        "LIFECYCLE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "LIFECYCLE_TOPIC_PREFIX": settings.topic_prefix,
        "LIFECYCLE_LOG_FORMAT": "json",
    }


@pytest.mark.parametrize("caught", ["active", "withdrawing", "purged"])
def test_reshred_brings_a_restored_member_back_to_purged_whatever_the_backup_caught(
    postgres_url: str, pg_schema: str, tmp_path: Path, caught: str
) -> None:
    settings = Settings(
        database_url=postgres_url,
        database_schema=pg_schema,
        master_key=new_master_key(),
        api_tokens={token_digest(token): role for role, token in TOKENS.items()},
    )
    migrate_lifecycle(settings)
    accounts = Accounts(env=settings.application_env())
    archive = tmp_path / "receipts.jsonl"
    dump = tmp_path / f"caught-{caught}.sql"
    try:
        live_id = accounts.register(**LIVE)
        account_id = accounts.register(**MEMBER)
        accounts.receive_scout(account_id, scout_id="s-1", company_id="acme", job_id="j-1")
        if caught == "active":
            dump_schema(postgres_url, pg_schema, dump)
        accounts.request_withdrawal(account_id, reason="postings_mismatch", comment="bye")
        if caught == "withdrawing":
            dump_schema(postgres_url, pg_schema, dump)
        accounts.purge(account_id)
        if caught == "purged":
            dump_schema(postgres_url, pg_schema, dump)
        original = accounts.load_for_audit(account_id)
        keep_receipt(accounts, settings, account_id, archive)
    finally:
        accounts.close()

    restore_schema(postgres_url, pg_schema, dump)
    assert fresh_read(settings, account_id)[1].value == caught
    result = reshred(cli_env(settings), "reshred", "--receipts", str(archive))

    assert result.returncode == 0, result.stderr
    again = 0 if caught == "purged" else 1
    assert f"purges recorded again: {again}, keys destroyed again: {again}" in result.stdout
    # The receipt was signed after the dump: the restored database lacks it, signed again.
    assert "receipts issued again: 1" in result.stdout
    replayed = reshred(cli_env(settings), "replay")
    assert replayed.returncode == 0, replayed.stdout
    assert MEMBER["email"] not in result.stdout + result.stderr + replayed.stdout
    app = Accounts(env=settings.application_env())
    try:
        account = app.load_for_audit(account_id)
        # Back to Purged with the facts the signed receipt kept: reason and times.
        assert account.status is AccountStatus.PURGED
        assert (account.email, account.display_name) == (REDACTED, REDACTED)
        assert account.withdrawal is not None
        assert account.withdrawal["reason"] == "postings_mismatch"
        assert account.withdrawn_at == original.withdrawn_at
        assert account.purged_at == original.purged_at
        db = app.database
        with db.transaction(commit=False) as cursor:
            keys = cursor.execute(
                f"SELECT COUNT(*) FROM {db.table(KEYS_TABLE)} WHERE account_id = %s",
                (db.id_param(account_id),),
            ).fetchone()
        assert keys == (0,)
        assert app.vault.is_destroyed(account_id)
        receipts = receipts_of(build_erasure(app, settings))
        receipt = receipts.get(erasure_receipt_id(account_id))
        assert receipt is not None and verify_receipt(receipt, receipts)["ok"] is True
        assert receipt["purged_at"] is not None and receipt["key"]["destroyed"] is True
        # A live member still decrypts.
        assert app.get_account(live_id).email == LIVE["email"]
        with TestClient(create_app(settings, app)) as client:
            for method, path, body in MEMBER_ROUTES:
                response = client.request(
                    method, path.format(id=account_id), json=body, headers=auth("service")
                )
                assert response.status_code == 410, (method, path, response.text)
            assert client.get(f"/v1/accounts/{live_id}", headers=auth("service")).status_code == 200
    finally:
        app.close()


def test_reshred_purges_an_account_an_older_reshred_left_active_without_its_key(
    accounts: Accounts,
) -> None:
    """The older reshred destroyed the keys of restored accounts but left them active: the
    address no longer opens, yet the account is purged, its claim released, and replay holds."""
    account_id = accounts.register(**MEMBER)
    live_id = accounts.register(**LIVE)
    # That older release recorded claims naming the account (read back as its legacy holder);
    # a claim of this release can only be released with the account's key.
    claim = accounts.repository.get(keyed_id(accounts._claim_key, MEMBER["email"]))
    assert isinstance(claim, EmailClaim)
    claim.release(accounts.vault.holder_token(account_id, claim.id))
    claim.claim(legacy_holder(account_id))
    accounts.save(claim)
    requested = datetime.now(UTC) + timedelta(seconds=1)
    assert accounts.vault.destroy_keys_of_purged_accounts([account_id]) == 1

    result = accounts.reshred(
        {
            account_id: KnownErasure(
                purged_at=requested + timedelta(hours=1),
                reason="hired_via_platform",
                requested_at=requested,
            )
        }
    )

    assert result == {"purges_recorded_again": 1, "keys_destroyed": 1}
    account = accounts.load_for_audit(account_id)
    assert account.status is AccountStatus.PURGED
    assert account.withdrawn_at == requested
    assert account.purged_at == requested + timedelta(hours=1)
    report = replay(accounts)
    assert report.ok, report.as_dict()
    # The address is free again: re-registration starts from nothing.
    assert accounts.register(**MEMBER) != account_id
    assert accounts.get_account(live_id).email == LIVE["email"]


def test_reshred_believes_no_topic_record_and_no_receipt_it_did_not_sign(
    postgres_url: str, pg_schema: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Issue 19: a forged `Purged` on the lifecycle topic made reshred shred a live member.
    Now a topic is never read, a receipt signed with another key is refused and counted, and
    the real erasure's receipt is honoured."""
    settings = Settings(
        database_url=postgres_url,
        database_schema=pg_schema,
        master_key=new_master_key(),
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
    )
    ensure_topics(kafka_bootstrap, settings.topics)
    migrate_lifecycle(settings)
    accounts = Accounts(env=settings.application_env())
    archive = tmp_path / "receipts.json"
    try:
        live_id = accounts.register(**LIVE)
        gone_id = accounts.register(**MEMBER)
        accounts.request_withdrawal(gone_id, reason="hired_elsewhere")
        accounts.purge(gone_id)
        real = receipts_of(build_erasure(accounts, settings)).issue(gone_id)
        assert real is not None
        # The forgeries: a Purged for the live member on the topic, and a receipt for them
        # signed with a key that is not the service's.
        now = datetime.now(UTC)
        forged = encode_record(
            PurgedV1(account_id=live_id, purged_at=now),
            ce_id=f"{live_id}:2",
            subject=str(live_id),
            time=now,
        )
        publisher = KafkaPublisher(kafka_bootstrap)
        publisher.publish(settings.topics.lifecycle, forged.key, forged.headers, forged.value)
        publisher.flush()
        publisher.close()
        body = {**real, "account_id": str(live_id), "receipt_id": str(erasure_receipt_id(live_id))}
        other = ReceiptSigner(os.urandom(32)).sign(body)
        archive.write_text(json.dumps([real, other]))
    finally:
        accounts.close()

    result = reshred(cli_env(settings), "reshred", "--receipts", str(archive))

    assert result.returncode == 1  # a receipt was refused: said, and counted
    assert "receipts refused: 1" in result.stdout
    assert "purges recorded again: 0" in result.stdout
    assert fresh_read(settings, live_id) == (LIVE["email"], AccountStatus.ACTIVE)
    assert fresh_read(settings, gone_id) == (REDACTED, AccountStatus.PURGED)
