"""A restored pre-purge backup brings a key back; `lifecycle audit reshred` shreds it again."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg

from lifecycle.application import Accounts
from lifecycle.crypto import new_master_key
from lifecycle.domain import REDACTED, AccountStatus
from lifecycle.kafka.admin import ensure_topics
from lifecycle.kafka.producer import KafkaPublisher
from lifecycle.relay import Relay
from lifecycle.settings import Settings

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


def reshred(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lifecycle", "audit", "reshred"],
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


def test_reshred_after_restoring_a_dump_taken_before_the_purge(
    postgres_url: str, pg_schema: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=postgres_url,
        database_schema=pg_schema,
        master_key=new_master_key(),
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
    )
    ensure_topics(kafka_bootstrap, settings.topics)
    accounts = Accounts(env=settings.application_env())
    publisher = KafkaPublisher(kafka_bootstrap)
    try:
        account_id = accounts.register(**MEMBER)
        accounts.request_withdrawal(account_id, reason="hired_elsewhere")
        dump = tmp_path / "before-purge.sql"
        dump_schema(postgres_url, pg_schema, dump)

        accounts.purge(account_id)
        # The relay carries Purged to the lifecycle topic: the ledger that outlives a restore.
        relay = Relay(accounts, publisher, topics=settings.topics)
        while relay.run_once():
            pass
        relay.close()
    finally:
        publisher.close()
        accounts.close()
    assert fresh_read(settings, account_id) == (REDACTED, AccountStatus.PURGED)

    restore_schema(postgres_url, pg_schema, dump)
    assert fresh_read(settings, account_id) == (MEMBER["email"], AccountStatus.WITHDRAWING)

    env = {
        **os.environ,
        "LIFECYCLE_DATABASE_URL": postgres_url,
        "LIFECYCLE_DATABASE_SCHEMA": pg_schema,
        "LIFECYCLE_MASTER_KEY": settings.master_key or "",
        "LIFECYCLE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "LIFECYCLE_TOPIC_PREFIX": settings.topic_prefix,
        "LIFECYCLE_LOG_FORMAT": "json",
    }
    result = reshred(env)
    assert result.returncode == 0, result.stderr
    assert "purges recorded again: 1, keys destroyed again: 1" in result.stdout
    assert MEMBER["email"] not in result.stdout + result.stderr
    assert fresh_read(settings, account_id) == (REDACTED, AccountStatus.PURGED)

    again = reshred(env)
    assert "purges recorded again: 0, keys destroyed again: 0" in again.stdout


def test_reshred_on_the_embedded_default_reports_nothing_to_do(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LIFECYCLE_DATABASE_URL": f"sqlite:///{tmp_path / 'embedded.sqlite3'}",
        "LIFECYCLE_LOG_FORMAT": "json",
    }
    env.pop("LIFECYCLE_KAFKA_BOOTSTRAP", None)
    result = reshred(env)
    assert result.returncode == 0, result.stderr
    assert "purges recorded again: 0, keys destroyed again: 0" in result.stdout
