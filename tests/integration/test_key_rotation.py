"""KEK rotation and destruction: a purged member's wrapped key, kept in a copy taken before the
purge (the SQLite files, a pg_dump), opens under nothing that remains once its version is
destroyed; a member who stayed still reads; claims and receipts survive the rotation."""

from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from uuid import UUID

import pytest
from cryptography.exceptions import InvalidTag
from support import wait_until

from lifecycle.account_terms import REDACTED
from lifecycle.application import Accounts
from lifecycle.audit.receipt import verify_receipt
from lifecycle.bootstrap import build_erasure, receipts_of
from lifecycle.crypto import KEYS_TABLE
from lifecycle.erasure.process import Confirmation, ErasureProcess
from lifecycle.erasure.status import CONFIRMED
from lifecycle.errors import EmailAlreadyClaimedError, MasterKeyError
from lifecycle.keyring import FileKeyring, KeyVersionDestroyedError, open_sealed, wrapped_version
from lifecycle.rotation import KeyRotation
from lifecycle.settings import Settings
from schemas.contract import ERASING_SERVICES, erasure_receipt_id

GONE = {
    "email": "rotation.gone.4417@example.jp",
    "display_name": "Rotan Goneyama",
    "phone": "+81-90-4417-0001",
    "consent_version": "v1",
}
STAYS = {
    "email": "rotation.stays.4417@example.jp",
    "display_name": "Rotan Stayama",
    "consent_version": "v1",
}


@pytest.fixture
def rotating(settings: Settings, tmp_path: Path) -> Settings:
    """A deployment of the master-key era, given a keyring directory; retention 0 so the test
    can destroy at once."""
    return settings.model_copy(update={"keyring_dir": tmp_path / "keys", "key_retention_days": 0.0})


def cli_env(settings: Settings, *, master_key: bool = True) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "LIFECYCLE_DATABASE_URL": settings.database_url,
        "LIFECYCLE_DATABASE_SCHEMA": settings.database_schema,
        "LIFECYCLE_KEYRING_DIR": str(settings.keyring_dir),
        "LIFECYCLE_KEY_RETENTION_DAYS": "0",
        "LIFECYCLE_LOG_FORMAT": "json",
        "LIFECYCLE_LOG_LEVEL": "WARNING",
        **({"LIFECYCLE_MASTER_KEY": settings.resolved_master_key()} if master_key else {}),
    }


def keys_command(settings: Settings, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "keys", *args],
        env=cli_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, object] = json.loads(done.stdout)
    return found


def wrapped_key(settings: Settings, accounts: Accounts, account_id: UUID) -> bytes:
    db = accounts.database
    with db.transaction(commit=False) as cursor:
        row = cursor.execute(
            f"SELECT wrapped_key FROM {db.table(KEYS_TABLE)} WHERE account_id = %s",
            (db.id_param(account_id),),
        ).fetchone()
    assert row is not None
    return bytes(row[0])


def copy_before_purge(settings: Settings, backend: str, target: Path) -> Path:
    """SQLite: the database's files as they lie; PostgreSQL: a pg_dump of the schema."""
    if backend == "sqlite":
        source = Path(settings.database_url.removeprefix("sqlite:///"))
        target.mkdir()
        for path in source.parent.glob(source.name + "*"):
            shutil.copy(path, target / path.name)
        return target / source.name
    dump = target.with_suffix(".sql")
    subprocess.run(
        [
            "pg_dump",
            "--no-owner",
            f"--schema={settings.database_schema}",
            f"--file={dump}",
            settings.database_url,
        ],
        check=True,
    )
    return dump


def wrapped_key_in_copy(copy: Path, backend: str, account_id: UUID) -> bytes:
    if backend == "sqlite":
        with sqlite3.connect(copy) as conn:
            row = conn.execute(
                f"SELECT wrapped_key FROM {KEYS_TABLE} WHERE account_id = ?", (account_id.hex,)
            ).fetchone()
        assert row is not None
        return bytes(row[0])
    # The dump's COPY block of the key table: `<uuid>\t\\x<hex>\t<timestamp>`.
    found = re.search(rf"^{account_id}\t\\\\x([0-9a-f]+)\t", copy.read_text(), re.MULTILINE)
    assert found is not None, "the pre-purge dump holds the member's wrapped key"
    return bytes.fromhex(found.group(1))


def test_a_pre_purge_copy_opens_nothing_once_the_old_version_is_destroyed(
    rotating: Settings, backend: str, tmp_path: Path
) -> None:
    accounts = Accounts(env=rotating.application_env())
    gone = accounts.register(**GONE)
    stays = accounts.register(**STAYS)
    accounts.request_withdrawal(gone, reason="other", comment="Goneyama leaves")
    wrapped_before = wrapped_key(rotating, accounts, gone)
    copy = copy_before_purge(rotating, backend, tmp_path / "before-purge")
    accounts.purge(gone)
    accounts.close()

    rotated = keys_command(rotating, "rotate", "--batch-size", "1")
    destroyed = keys_command(rotating, "destroy")

    assert rotated["created"] is True and rotated["version"] == 2 and rotated["retired"] == [1]
    assert destroyed == {"destroyed": [1]}
    # The master key leaves the configuration; what remains is the keyring directory, and
    # the service refuses to start while the master key is still configured.
    with pytest.raises(MasterKeyError):
        Accounts(env=rotating.application_env())
    remaining = rotating.model_copy(update={"master_key": None})
    keyring = FileKeyring(Path(str(rotating.keyring_dir)))
    kept = wrapped_key_in_copy(copy, backend, gone)
    assert kept == wrapped_before and wrapped_version(kept) == 1
    with pytest.raises(KeyVersionDestroyedError):
        keyring.unwrap(kept, gone.bytes)
    # Nor does any key file that remains open it, whatever version it claims.
    materials = [
        base64.urlsafe_b64decode(path.read_text()) for path in keyring.directory.glob("*.key")
    ]
    assert len(materials) == 3  # kek 2, claim 1, signing 1
    for material in materials:
        with pytest.raises(InvalidTag):
            open_sealed(material, kept, gone.bytes)

    after = Accounts(env=remaining.application_env())
    try:
        assert after.load_for_audit(gone).email == REDACTED
        member = after.get_account(stays)
        assert (member.email, member.display_name) == (STAYS["email"], STAYS["display_name"])
        assert wrapped_version(wrapped_key(remaining, after, stays)) == 2
        # The claim key survived the rotation: the address is still taken.
        with pytest.raises(EmailAlreadyClaimedError):
            after.register(**{**STAYS, "email": STAYS["email"].upper()})
        # ... and the purged member's address is free again, as on any purge.
        after.register(**GONE)
    finally:
        after.close()
    if backend == "sqlite":
        # The pre-purge copy itself, opened as a database: its keys name a destroyed version.
        restored = remaining.model_copy(update={"database_url": f"sqlite:///{copy}"})
        old = Accounts(env=restored.application_env())
        try:
            assert old.load_for_audit(gone).email == REDACTED
        finally:
            old.close()


def purged(process: ErasureProcess, email: str) -> UUID:
    accounts = process.accounts
    account_id = accounts.register(email=email, display_name="Receipt Rotan", consent_version="v")
    accounts.request_withdrawal(account_id, reason="other")
    for service in ERASING_SERVICES:
        process.handle(Confirmation(account_id, service, CONFIRMED, 1, f"c-{service}"))
    return account_id


def test_old_receipts_verify_after_rotations_and_new_ones_name_the_new_key(
    rotating: Settings,
) -> None:
    accounts = Accounts(env=rotating.application_env())
    try:
        process = build_erasure(accounts, rotating)
        receipts = receipts_of(process)
        first = receipts.get(erasure_receipt_id(purged(process, "first.rotan@example.jp")))
        assert first is not None
        assert first["key"]["wrapped_under"] == 1
        assert first["key"]["unrecoverable_by"] is not None

        rotation = KeyRotation(accounts.vault, rotating.key_policy)
        assert rotation.rotate().version == 2
        rotation.new_signing_version()
        second = receipts.get_or_issue(purged(process, "second.rotan@example.jp"))[0]
        assert second is not None

        assert second["signature"]["key_id"] != first["signature"]["key_id"]
        assert second["key"]["wrapped_under"] == 2
        # Version 1, retired but not yet destroyed, may still open a copy: both are named.
        assert {w["version"] for w in second["key"]["wrapping_keys"]} == {1, 2}
        for receipt in (first, second):
            assert verify_receipt(receipt, receipts)["ok"], receipt["receipt_id"]
        published = {k["key_id"] for k in receipts.signer.public_key_document()["keys"]}
        assert published == {first["signature"]["key_id"], second["signature"]["key_id"]}
    finally:
        accounts.close()


def test_rotation_resumes_after_kill_9(rotating: Settings, backend: str) -> None:
    accounts = Accounts(env=rotating.application_env())
    db, vault = accounts.database, accounts.vault
    ids = [uuid.uuid4() for _ in range(3000)]
    try:
        with db.transaction() as cursor:
            for account_id in ids:
                cursor.execute(
                    f"INSERT INTO {db.table(KEYS_TABLE)} (account_id, wrapped_key) VALUES (%s, %s)",
                    (db.id_param(account_id), vault.new_key(account_id)[1]),
                )
        keys = {a: vault.find_key(a) for a in ids[:50]}
        rotation = KeyRotation(vault, rotating.key_policy)

        child = subprocess.Popen(
            [sys.executable, "-m", "lifecycle", "keys", "rotate", "--batch-size", "5"],
            env=cli_env(rotating),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: rotation.versions_in_use().get(2, 0) > 0, "re-wrapping began")
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        status = {(s["purpose"], s["version"]): s for s in rotation.status()}
        assert status[("kek", 1)]["data_keys"], "killed before it finished"
        assert status[("kek", 1)]["retired_at"] is None

        report = rotation.rotate()

        assert report.created is False and report.version == 2 and report.retired == (1,)
        assert rotation.count_older(2) == 0
        for account_id, key in keys.items():
            vault.forget(account_id)
            assert vault.find_key(account_id) == key
    finally:
        accounts.close()
