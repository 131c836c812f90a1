"""Case keys: `lifecycle keys rotate`'s re-wrap rate over 100,000 live data keys (20,000 with
--quick), online: registrations run through `Accounts` during every rotation (their rate is
reported beside it).

Service: `KeyRotation.rotate` (keyset pages of 500, one compare-and-set UPDATE per page,
progress each page) on PostgreSQL, each repeat a new KEK version over the same keys.
Baseline: the same work without the service's code: one psycopg read of every wrapped key,
AES-GCM open and seal in Python, one `UPDATE ... FROM unnest` per 500 keys.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.core import Context, Row, Target, fresh_schema, log
from bench.workload import bench_settings, fast_registration_kwargs, open_accounts, unique_email
from lifecycle.application import Accounts
from lifecycle.rotation import KeyRotation

KEYS, QUICK_KEYS = 100_000, 20_000
BATCH = 500
LOAD_CALLERS = 2
TARGET = Target("ratio_at_least", 0.5)


def run(ctx: Context) -> list[Row]:
    count = QUICK_KEYS if ctx.quick else KEYS
    with fresh_schema(ctx.database_url, "keys") as schema, tempfile.TemporaryDirectory() as keys:
        settings = bench_settings(ctx.database_url, schema).model_copy(
            update={"master_key": None, "keyring_dir": Path(keys) / "keyring"}
        )
        accounts = open_accounts(settings)
        try:
            _fill(accounts, ctx.database_url, schema, count)
            log(f"  keys: {count} live data keys")
            service, registrations = [], []
            for _ in range(ctx.repeats):
                rate, registered = _rotate_under_load(accounts)
                service.append(rate)
                registrations.append(registered)
            baseline = [_raw_rewrap(ctx.database_url, schema) for _ in range(ctx.repeats)]
        finally:
            accounts.close()
    ctx.note(
        "keys",
        f"registrations during rotation ({LOAD_CALLERS} callers): "
        f"{sorted(registrations)[len(registrations) // 2]:.0f}/s median",
    )
    return [
        Row(
            "keys",
            f"rotate {count:,} keys online",
            "keys/s",
            service,
            baseline=baseline,
            baseline_name="psycopg read + AES-GCM + UPDATE FROM unnest",
            target=TARGET,
        )
    ]


def _fill(accounts: Accounts, database_url: str, schema: str, count: int) -> None:
    """`count` data keys wrapped under the current version, copied in (no events needed:
    rotation reads only the key table)."""
    keyring = accounts.keyring
    with (
        psycopg.connect(database_url) as conn,
        conn.cursor() as cursor,
        cursor.copy(
            f"COPY {schema}.account_keys (account_id, wrapped_key) FROM STDIN (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(["uuid", "bytea"])
        for _ in range(count):
            account_id = uuid.uuid4()
            copy.write_row((account_id, keyring.wrap(os.urandom(32), account_id.bytes)))


def _rotate_under_load(accounts: Accounts) -> tuple[float, float]:
    stop = threading.Event()
    registered = [0] * LOAD_CALLERS

    def caller(index: int) -> None:
        while not stop.is_set():
            accounts.register(**fast_registration_kwargs(unique_email("rot")))
            registered[index] += 1

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(LOAD_CALLERS)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    report = KeyRotation(accounts.vault, batch_size=BATCH).rotate()
    seconds = time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    log(f"  rotation to v{report.version}: {report.rewrapped} keys in {seconds:.1f}s")
    return report.rewrapped / seconds, sum(registered) / seconds


def _raw_rewrap(database_url: str, schema: str) -> float:
    old, new = AESGCM(os.urandom(32)), AESGCM(os.urandom(32))
    started = time.perf_counter()
    with psycopg.connect(database_url) as conn:
        rows: list[Any] = conn.execute(
            f"SELECT account_id, wrapped_key FROM {schema}.account_keys ORDER BY account_id"
        ).fetchall()
        conn.commit()
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            ids, fresh, previous = [], [], []
            for account_id, wrapped in batch:
                nonce = os.urandom(12)
                # The baseline's key cannot open the service's bytes: it seals and opens its own.
                plain = old.decrypt(nonce, old.encrypt(nonce, bytes(wrapped)[-48:-16], None), None)
                ids.append(account_id)
                fresh.append(nonce + new.encrypt(nonce, plain, account_id.bytes))
                previous.append(bytes(wrapped))
            with conn.transaction():
                conn.execute(
                    f"UPDATE {schema}.account_keys AS k SET wrapped_key = c.new FROM "
                    "unnest(%s::uuid[], %s::bytea[], %s::bytea[]) AS c(account_id, new, old) "
                    "WHERE k.account_id = c.account_id AND k.wrapped_key = c.old",
                    (ids, fresh, previous),
                )
    return len(rows) / (time.perf_counter() - started)
