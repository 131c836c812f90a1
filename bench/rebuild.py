"""Rebuild one read model over a large log on the real PostgreSQL; report time and peak memory.

    .venv/bin/python -m bench.rebuild [--events 200000] [--small 50000] [--projection NAME]

Fills a schema of its own with a realistic log (accounts with scouts, edits, gifts and
withdrawals, saved 500 aggregates per transaction), then rebuilds the read model in a fresh
process while a writer keeps registering members, first at `--small` events and then at
`--events`, and prints each run's progress, duration and peak RSS (VmHWM). Flat memory
shows as the same peak at both sizes. The schema is dropped at the end unless `--keep`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    url = os.environ.get("LIFECYCLE_DATABASE_URL", "")
    env_file = ROOT / ".services" / "env"
    if not url and env_file.exists():
        for line in env_file.read_text().splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            if name == "LIFECYCLE_DATABASE_URL":
                url = value.strip("'\"")
    if not url.startswith("postgres"):
        sys.exit("bench.rebuild: needs PostgreSQL (scripts/services up)")
    return url


def peak_rss_mib() -> float:
    """This process's own peak RSS: VmHWM (reset by exec, unlike ru_maxrss, which keeps the
    forking parent's peak), falling back to getrusage where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def open_accounts(url: str, schema: str, master_key: str) -> Any:
    from lifecycle.application import Accounts
    from lifecycle.bootstrap import migrate_lifecycle
    from lifecycle.settings import Settings

    settings = Settings(database_url=url, database_schema=schema, master_key=master_key)
    migrate_lifecycle(settings)  # idempotent: `lifecycle migrate` before the first start
    return Accounts(env=settings.application_env())


def generate(accounts: Any, events: int, batch: int = 500) -> int:
    """Append accounts until the log holds at least `events` events; returns the head."""
    from lifecycle.domain import Account

    head = accounts.recorder.max_notification_id() or 0
    n = head
    started = time.monotonic()
    while head < events:
        pending = []
        for _ in range(batch):
            n += 1
            account = Account.register(
                email=f"bench-{uuid.uuid4().hex}@example.jp",
                display_name="Bench Member",
                consent_version="2026-04",
                profile={"birth_year": 1980 + n % 30, "prefecture": "Tokyo"},
            )
            for s in range(6):
                account.receive_scout(
                    scout_id=f"s-{s}",
                    company_id=f"company-{(n + s) % 300}",
                    job_id=f"job-{s}",
                    received_at=datetime.now(UTC),
                )
            account.edit_preferences(notifications={"recommendations": n % 2 == 0})
            if n % 5 < 2:
                account.claim_gift(company_id=f"company-{n % 300}", start_date=date(2026, 7, 1))
            if n % 4 == 0:
                account.request_withdrawal(
                    reason=("hired_elsewhere", "too_many_notifications", "other")[n % 3],
                    comment="bench",
                )
            pending.append(account)
        accounts.save(*pending)
        head = accounts.recorder.max_notification_id() or 0
        rate = head / max(time.monotonic() - started, 1e-9)
        print(f"generate: {head}/{events} events ({rate:,.0f}/s)", file=sys.stderr, flush=True)
    return head


def rebuild_child(url: str, schema: str, master_key: str, projection: str) -> None:
    """Runs in a fresh process, so its peak RSS is the rebuild's alone."""
    from lifecycle.logs import configure_logging
    from projections.registry import READ_MODELS
    from projections.runner import ProgressPrinter, rebuild

    configure_logging("json", "WARNING")
    accounts = open_accounts(url, schema, master_key)
    rss_at_start = peak_rss_mib()
    stop_writer = threading.Event()
    written = 0

    def keep_writing() -> None:
        # The service keeps running: members register while the rebuild replays.
        nonlocal written
        while not stop_writer.wait(0.01):
            accounts.register(
                email=f"live-{uuid.uuid4().hex}@example.jp",
                display_name="Live Member",
                consent_version="2026-04",
            )
            written += 1

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    printer = ProgressPrinter(lambda line: print(line, file=sys.stderr, flush=True), 2.0)
    head_before = accounts.recorder.max_notification_id()
    try:
        result = rebuild(accounts, READ_MODELS[projection], batch_size=1000, progress=printer)
    finally:
        stop_writer.set()
        writer.join()
    print(
        json.dumps(
            {
                **result.as_dict(),
                "log_head_at_start": head_before,
                "events_per_s": round(result.events / result.seconds),
                "members_registered_meanwhile": written,
                "peak_rss_at_start_mib": rss_at_start,
                "peak_rss_mib": peak_rss_mib(),
            }
        ),
        flush=True,
    )
    accounts.close()


def audit_child(url: str, schema: str, master_key: str, what: str) -> None:
    """One audit pass over the whole log in a fresh process: export, replay or verify."""
    from lifecycle.audit.export import export_log
    from lifecycle.audit.replay import replay
    from lifecycle.audit.verify import verify
    from lifecycle.logs import configure_logging
    from projections.hashchain import HashChain
    from projections.runner import Projector

    configure_logging("json", "WARNING")
    accounts = open_accounts(url, schema, master_key)
    started = time.monotonic()
    if what == "export":
        with open(os.devnull, "w") as sink:
            count = export_log(accounts, sink)
        outcome: Any = {"events": count}
    elif what == "replay":
        outcome = replay(accounts).as_dict()
        outcome.pop("first_violations")
    else:
        chain = HashChain(accounts.database)
        chain.create()
        Projector(accounts, chain, batch_size=1000).catch_up()
        chained = time.monotonic() - started
        started = time.monotonic()
        found = verify(chain, accounts.recorder)
        outcome = {"chained_s": round(chained, 1), "ok": found.ok, "checked": found.checked}
    seconds = time.monotonic() - started
    print(
        json.dumps(
            {
                "pass": what,
                **outcome,
                "seconds": round(seconds, 1),
                "peak_rss_mib": peak_rss_mib(),
            }
        ),
        flush=True,
    )
    accounts.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--small", type=int, default=50_000)
    parser.add_argument("--projection", default="account_directory")
    parser.add_argument("--keep", action="store_true", help="Keep the schema afterwards.")
    parser.add_argument("--audit", action="store_true", help="Also time export/replay/verify.")
    parser.add_argument("--child", nargs=3, metavar=("SCHEMA", "KEY", "PROJECTION"))
    parser.add_argument("--child-audit", nargs=3, metavar=("SCHEMA", "KEY", "PASS"))
    args = parser.parse_args()
    url = database_url()
    if args.child:
        rebuild_child(url, *args.child)
        return
    if args.child_audit:
        audit_child(url, *args.child_audit)
        return

    import psycopg

    from lifecycle.crypto import new_master_key
    from lifecycle.logs import configure_logging

    configure_logging("json", "WARNING")
    schema = f"bench_rebuild_{uuid.uuid4().hex[:8]}"
    master_key = new_master_key()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    runs = []
    try:
        for size in (args.small, args.events):
            accounts = open_accounts(url, schema, master_key)
            generate(accounts, size)
            accounts.close()
            child = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.rebuild",
                    "--child",
                    schema,
                    master_key,
                    args.projection,
                ],
                cwd=ROOT,
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            )
            runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
        child_audit = [sys.executable, "-m", "bench.rebuild", "--child-audit", schema, master_key]
        for what in ("export", "replay", "verify") if args.audit else ():
            child = subprocess.run(
                [*child_audit, what],
                cwd=ROOT,
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            )
            print(child.stdout.strip().splitlines()[-1], flush=True)
    finally:
        if not args.keep:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
    small, large = runs
    print(
        f"\n{args.projection}: {small['events']} events in {small['seconds']}s, peak RSS "
        f"{small['peak_rss_mib']} MiB; {large['events']} events in {large['seconds']}s "
        f"({large['events_per_s']}/s), peak RSS {large['peak_rss_mib']} MiB"
    )


if __name__ == "__main__":
    main()
