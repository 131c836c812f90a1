"""`python -m bench.command_costs [--n N]`: what one command costs, in measures load barely moves.

For a registration and a preference edit through `Accounts` on PostgreSQL, one caller:
- round trips per command, counted from libpq's protocol trace (`bench.wire`);
- Python CPU per command in µs (`time.process_time` around N commands, no profiler, no trace);
- wall time per command in µs (on a loaded machine, this one moves with the load).

An edit goes to an account registered before and edited once (loaded); a hot edit to one of a
few accounts edited in turn, each again within a second (`lifecycle.hot_accounts`: no load).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from itertools import count
from uuid import UUID

from bench.core import fresh_schema, services_env
from bench.wire import traced
from bench.workload import bench_settings, fast_registration_kwargs, open_accounts, unique_email
from lifecycle.application import Accounts
from lifecycle.logs import configure_logging

WARM_UP = 50
HOT_MEMBERS = 8


def _commands(accounts: Accounts, n: int) -> dict[str, Callable[[int], object]]:
    # Cold: each member edited once (its account is loaded). Hot: a few members edited in
    # turn, each again within a second (the copy this process saved is used: no load).
    cold = [
        accounts.register(**fast_registration_kwargs(unique_email("cold")))
        for _ in range(WARM_UP + 2 * n)
    ]
    hot = [
        accounts.register(**fast_registration_kwargs(unique_email("hot")))
        for _ in range(HOT_MEMBERS)
    ]
    tickets = count(1)

    def register(_: int) -> UUID:
        return accounts.register(**fast_registration_kwargs(unique_email("reg")))

    def edit(account_id: UUID) -> object:
        ticket = next(tickets)
        return accounts.edit_preferences(
            account_id,
            desired={"locations": ["Tokyo"], "min_salary": 5_000_000 + ticket},
            work_history=[{"company": "Acme KK", "title": f"Engineer {ticket}"}],
        )

    cold_turn = count()
    return {
        "register": register,
        "edit": lambda _: edit(cold[next(cold_turn)]),
        "edit (hot)": lambda i: edit(hot[i % HOT_MEMBERS]),
    }


def measure(accounts: Accounts, n: int) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    pool = accounts.database.datastore.pool  # type: ignore[union-attr]
    for name, command in _commands(accounts, n).items():
        for i in range(WARM_UP):  # warm: statements prepared on every pooled connection
            command(i)
        with traced(pool) as trace:
            for i in range(n):
                command(i)
        turns = trace.turns() / n
        trace.close()
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(n):
            command(i)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        found[name] = {"round_trips": turns, "cpu_us": cpu / n * 1e6, "wall_us": wall / n * 1e6}
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.command_costs")
    parser.add_argument("--n", type=int, default=400, help="commands per measure")
    args = parser.parse_args(argv)
    configure_logging("json", "WARNING")
    database_url = services_env()["LIFECYCLE_DATABASE_URL"]
    with fresh_schema(database_url, "costs") as schema:
        accounts = open_accounts(bench_settings(database_url, schema))
        try:
            results = measure(accounts, args.n)
        finally:
            accounts.close()
    print(f"{'command':<12} {'round trips':>12} {'CPU µs':>8} {'wall µs':>8}   (n={args.n})")
    for name, row in results.items():
        print(
            f"{name:<12} {row['round_trips']:>12.2f} {row['cpu_us']:>8.0f} {row['wall_us']:>8.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
