"""`python -m bench.replay_costs [--events N]`: replay's and rebuild's Python CPU per event, in µs.

A log of N events (bench.workload.generate_log: registrations with their e-mail claims, sealed
edits, scouts) read three ways by a fresh `Accounts` each pass (cold key cache, as a separate
`lifecycle audit replay` process has): the raw read (bench.case_replay's psycopg cursor, no
decoding: the baseline), `lifecycle audit replay`, and the rebuild of the account directory.
The passes interleave (raw, replay, rebuild, raw, ...), so drift of the shared machine touches
each alike. The CPU is this process's and its children's (a replay's forked workers:
lifecycle.audit.forked), not the database server's share of a rebuild's writes (the wall
time, printed beside it, is, and means little on a loaded machine).

    python -m bench.replay_costs --events 20000 --passes 3 [--modes raw,replay,replay1,rebuild]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable

from bench.case_replay import audit_replay, raw_read
from bench.core import services_env
from bench.workload import schema_with_log
from lifecycle.application import Accounts
from lifecycle.logs import configure_logging
from lifecycle.settings import Settings


def raw_pass(settings: Settings) -> int:
    return raw_read(settings.database_url, f"{settings.database_schema}.accounts_events")


def replay_pass(settings: Settings, workers: int | None = None) -> int:
    assert settings.master_key is not None
    events, _ = audit_replay(
        settings.database_url,
        str(settings.database_schema),
        settings.master_key.get_secret_value(),
        workers,
    )
    return events


def rebuild_pass(settings: Settings) -> int:
    from projections.directory import AccountDirectory
    from projections.runner import rebuild

    accounts = Accounts(env=settings.application_env())
    try:
        return rebuild(accounts, AccountDirectory).events
    finally:
        accounts.close()


def cpu_seconds() -> float:
    """This process's CPU and that of its children ended so far."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


PASSES: dict[str, Callable[[Settings], int]] = {
    "raw": raw_pass,
    "replay": replay_pass,  # its default workers (forked processes, their CPU counted)
    "replay1": lambda settings: replay_pass(settings, workers=1),  # in this process alone
    "rebuild": rebuild_pass,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay_costs")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--modes", default="raw,replay,rebuild")
    args = parser.parse_args(argv)
    configure_logging("json", "WARNING")
    database_url = services_env()["LIFECYCLE_DATABASE_URL"]
    modes = args.modes.split(",")
    with schema_with_log(database_url, "replaycosts", args.events) as settings:
        cpu: dict[str, list[float]] = {mode: [] for mode in modes}
        wall: dict[str, list[float]] = {mode: [] for mode in modes}
        for mode in modes:  # warm-up: imports, the server's caches
            PASSES[mode](settings)
        for _ in range(args.passes):
            for mode in modes:
                began_cpu, began = cpu_seconds(), time.perf_counter()
                events = PASSES[mode](settings)
                cpu[mode].append((cpu_seconds() - began_cpu) / events * 1e6)
                wall[mode].append((time.perf_counter() - began) / events * 1e6)
        for mode in modes:
            print(
                f"{mode}: {events} events, CPU µs/event "
                f"{', '.join(f'{v:.1f}' for v in cpu[mode])} (median "
                f"{statistics.median(cpu[mode]):.1f}); wall µs/event median "
                f"{statistics.median(wall[mode]):.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
