"""Case scale, cost as work grows: commands, a withdrawal's latency and replay on a store of a
million events, against the same on an empty store.

Two schemas side by side. `empty` holds only the members the case edits;
`loaded` holds 1M events (`--quick`: 200k, loaded in ~20 s) put in by `bench.scale_store`
(COPY of events sealed by the application's own mapper with per-account keys, the wrapped
keys, the account directory's rows, the relay's and the directory's positions at the head),
and the members to edit are drawn at random from the whole load. Both then register the
members to withdraw (the relay publishes them, so the services downstream know them).

- replay: `lifecycle audit replay` (case_replay's worker, a subprocess each, so its peak RSS
  is its own) when the loaded store holds 100k events (quick: 20k) and again at 1M (200k),
  each beside a raw psycopg read of the same rows: the cost per event at the large size over
  that at the small (1.0 = linear in events) and the peak RSS growth (flat: <= 1.25x).
- commands: `register` and `edit_preferences`, one caller, the two stores in turns within
  every repetition so the shared machine's drift weighs on both: ops/s and the Python CPU
  per command (`time.process_time`), loaded / empty.
- withdrawal: `WithdrawalRequested` stored -> `Purged` stored through the erasure pipeline
  (case_erasure's five processes per store, both pipelines up, runs alternating between the
  stores) at 20 withdrawals/s without background load: p50 and p99, loaded / empty.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg

from bench.case_erasure import WITHDRAWALS_PER_S, one_run, wait_idle
from bench.case_replay import run_worker
from bench.core import Context, Row, Target, fresh_schema, log, percentile
from bench.erasure_workers import Pipeline
from bench.scale_store import load_store
from bench.workload import (
    EVENTS_PER_ACCOUNT,
    REGISTERED_EVENTS,
    bench_settings,
    fast_registration_kwargs,
    generate_log,
    open_accounts,
    unique_email,
)
from lifecycle.application import Accounts
from lifecycle.kafka.admin import ensure_topics
from schemas.contract import ERASING_SERVICES, TopicNames

# The targets: commands and latency within 20% of the empty store, replay linear in
# events, memory flat.
RATE = Target("ratio_at_least", 0.8)
COST = Target("ratio_at_most", 1.2)
LINEAR = Target("at_most", 1.2)
FLAT = Target("at_most", 1.25)
WARMUP_S = 1.0


@dataclass(frozen=True)
class Plan:
    small: int
    large: int
    edit_members: int
    runs: int
    run_seconds: float

    @property
    def withdrawals(self) -> int:
        return int(WITHDRAWALS_PER_S * (self.run_seconds * self.runs + WARMUP_S)) + 10


def plan_for(ctx: Context) -> Plan:
    if ctx.quick:
        return Plan(small=20_000, large=200_000, edit_members=800, runs=2, run_seconds=3.0)
    return Plan(small=100_000, large=1_000_000, edit_members=4_000, runs=3, run_seconds=10.0)


def label(size: int) -> str:
    return f"{size / 1_000_000:g}M" if size >= 1_000_000 else f"{size // 1000}k"


@dataclass
class Store:
    """One schema under test, its application, and the members the case uses in it."""

    name: str
    schema: str
    accounts: Accounts
    master_key: str
    edit: list[UUID] = field(default_factory=list)
    withdraw: list[UUID] = field(default_factory=list)
    events: int = 0
    tickets: int = 0
    rates: dict[str, list[float]] = field(default_factory=dict)
    cpu_us: dict[str, list[float]] = field(default_factory=dict)
    latencies: list[dict[str, Any]] = field(default_factory=list)

    def take(self, ids: list[UUID], plan: Plan) -> None:
        """Members to edit, drawn from the load; members to withdraw, registered after it.

        The withdrawn must be known downstream (the mail service holds an address to
        suppress before it confirms), so they are registered after the positions moved to
        the head and the relay publishes them before the runs, as in the erasure case."""
        self.edit = random.Random(25).sample(ids, plan.edit_members)
        self.withdraw = generate_log(
            self.accounts,
            REGISTERED_EVENTS * plan.withdrawals,
            keep_ids=True,
            registered_only=True,
        ).account_ids

    def register(self) -> object:
        return self.accounts.register(**fast_registration_kwargs(unique_email("scale")))

    def edit_one(self) -> object:
        # Each edit a new value on the next member in turn (a real PreferencesEdited each time;
        # members far apart, so most loads are cold, as in the commands case).
        self.tickets += 1
        return self.accounts.edit_preferences(
            self.edit[self.tickets % len(self.edit)],
            desired={"locations": ["Tokyo"], "min_salary": 5_000_000 + self.tickets},
            work_history=[{"company": "Acme KK", "title": f"Engineer {self.tickets}"}],
        )

    def operation(self, command: str) -> Callable[[], object]:
        return self.register if command == "register" else self.edit_one

    def sample(self, command: str, seconds: float) -> None:
        rate, cpu = measure(self.operation(command), seconds)
        self.rates.setdefault(command, []).append(rate)
        self.cpu_us.setdefault(command, []).append(cpu)


def measure(operation: Callable[[], object], seconds: float) -> tuple[float, float]:
    """One caller for about `seconds`: (operations/s, this process's CPU µs per operation)."""
    done = 0
    cpu = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline or done == 0:
        operation()
        done += 1
    elapsed = time.perf_counter() - started
    return done / elapsed, (time.process_time() - cpu) * 1e6 / done


def _open(ctx: Context, stack: contextlib.ExitStack, name: str) -> Store:
    schema = stack.enter_context(fresh_schema(ctx.database_url, f"scale_{name}"))
    settings = bench_settings(ctx.database_url, schema)
    accounts = open_accounts(settings)
    stack.callback(accounts.close)
    return Store(name, schema, accounts, settings.resolved_master_key())


def run(ctx: Context) -> list[Row]:
    if not ctx.kafka_bootstrap:
        raise RuntimeError("no Kafka (LIFECYCLE_KAFKA_BOOTSTRAP)")
    plan = plan_for(ctx)
    replay: dict[int, dict[str, dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        empty, loaded = _open(ctx, stack, "empty"), _open(ctx, stack, "loaded")
        made = load_store(empty.accounts, EVENTS_PER_ACCOUNT * plan.edit_members)
        empty.events = made.events
        empty.take(made.account_ids, plan)
        ids: list[UUID] = []
        for size in (plan.small, plan.large):
            made = load_store(loaded.accounts, size - loaded.events)
            loaded.events += made.events
            ids.extend(made.account_ids)
            log(
                f"scale: loaded store now {loaded.events} events "
                f"(+{made.events} in {made.seconds:.0f}s)"
            )
            replay[size] = {
                mode: run_worker(ctx, mode, loaded.schema, loaded.master_key)
                for mode in ("raw", "replay")
            }
            log(f"scale: replay {label(size)}: {replay[size]}")
        loaded.take(ids, plan)
        stores = (empty, loaded)
        _commands(ctx, stores)
        _withdrawals(ctx, plan, stores)
    ctx.extra["scale"] = {
        "events": {s.name: s.events for s in stores},
        "replay": {label(size): value for size, value in replay.items()},
        "withdrawals": {s.name: s.latencies for s in stores},
    }
    ctx.note(
        "scale",
        f"empty store: {empty.events} events (only the {plan.edit_members} members it edits); "
        f"loaded: {loaded.events} events by COPY (bench/scale_store.py); both then register "
        f"{plan.withdrawals} members to withdraw; commands "
        "one caller, the stores in turns each repetition, CPU = this process's "
        "time.process_time per command; withdrawal->purged through 5 worker processes per store "
        f"at {WITHDRAWALS_PER_S:g}/s, runs alternating between the stores",
    )
    return [*_command_rows(stores), *_withdrawal_rows(stores), *_replay_rows(plan, replay)]


def _commands(ctx: Context, stores: tuple[Store, Store]) -> None:
    for command in ("register", "edit"):
        log(f"scale: {command}, one caller, {ctx.repeats} x {ctx.seconds:g}s per store")
        for store in stores:
            measure(store.operation(command), ctx.warmup_seconds)
        for _ in range(ctx.repeats):
            for store in stores:
                store.sample(command, ctx.seconds)


def _withdrawals(ctx: Context, plan: Plan, stores: tuple[Store, Store]) -> None:
    pipelines: dict[str, tuple[Pipeline, TopicNames]] = {}
    try:
        for store in stores:
            topics = TopicNames(prefix=f"bench-{uuid.uuid4().hex[:8]}.")
            ensure_topics(ctx.kafka_bootstrap, topics)
            pipeline = Pipeline(ctx, store.schema, topics.prefix, store.master_key)
            pipelines[store.name] = (pipeline, topics)
            pipeline.start()
        for store in stores:
            pipeline, topics = pipelines[store.name]
            wait_idle(ctx, store.accounts, topics, pipeline)
            one_run(ctx, store.accounts, store.withdraw, [], WARMUP_S, **_on(pipelines, store))
        for index in range(plan.runs):
            for store in stores if index % 2 == 0 else reversed(stores):
                pipeline, topics = pipelines[store.name]
                wait_idle(ctx, store.accounts, topics, pipeline)
                result = one_run(
                    ctx,
                    store.accounts,
                    store.withdraw,
                    [],
                    plan.run_seconds,
                    **_on(pipelines, store),
                )
                lat = result["latencies_ms"]
                log(
                    f"scale: {store.name} withdrawals run {index + 1}: {len(lat)} purged, "
                    f"{result['missing']} missing, p50 {percentile(lat, 0.5):.0f} ms, p99 "
                    f"{percentile(lat, 0.99):.0f} ms; {result['stages']}"
                )
                store.latencies.append(result)
    finally:
        for pipeline, _ in pipelines.values():
            pipeline.stop()
        _clean_up(ctx, stores, [topics for _, topics in pipelines.values()])


def _on(pipelines: dict[str, tuple[Pipeline, TopicNames]], store: Store) -> dict[str, Any]:
    pipeline, topics = pipelines[store.name]
    return {"pipeline": pipeline, "topics": topics, "background": False}


def _clean_up(ctx: Context, stores: tuple[Store, Store], topics: list[TopicNames]) -> None:
    from bench.case_relay import delete_topics

    with psycopg.connect(ctx.database_url, autocommit=True) as conn:
        for store in stores:
            for name in ERASING_SERVICES:
                conn.execute(f"DROP SCHEMA IF EXISTS {store.schema}_{name} CASCADE")
    for names in topics:
        delete_topics(ctx.kafka_bootstrap, list(names.all()))


def _command_rows(stores: tuple[Store, Store]) -> list[Row]:
    empty, loaded = stores
    rows: list[Row] = []
    for command in ("register", "edit"):
        rows.append(
            Row(
                case="scale",
                variant=f"{command} c=1, {label(loaded.events)} events",
                unit="ops/s",
                samples=loaded.rates[command],
                baseline=empty.rates[command],
                baseline_name="empty store",
                target=RATE,
            )
        )
        rows.append(
            Row(
                case="scale",
                variant=f"  {command} CPU per command",
                unit="µs",
                samples=loaded.cpu_us[command],
                baseline=empty.cpu_us[command],
                baseline_name="empty store",
                target=COST,
                lower_is_better=True,
            )
        )
    return rows


def _withdrawal_rows(stores: tuple[Store, Store]) -> list[Row]:
    empty, loaded = stores

    def per_run(store: Store, share: float) -> list[float]:
        # An erasure that never completed counts as infinitely late.
        return [
            percentile(r["latencies_ms"] + [float("inf")] * r["missing"], share)
            for r in store.latencies
        ]

    count = sum(len(r["latencies_ms"]) for r in loaded.latencies)
    return [
        Row(
            case="scale",
            variant=f"withdrawal->purged {name}, {label(loaded.events)} events",
            unit="ms",
            samples=per_run(loaded, share),
            baseline=per_run(empty, share),
            baseline_name="empty store",
            target=COST,
            lower_is_better=True,
            note=f"{count} erasures in {len(loaded.latencies)} run(s)" if share == 0.5 else "",
        )
        for name, share in (("p50", 0.5), ("p99", 0.99))
    ]


def _replay_rows(plan: Plan, replay: dict[int, dict[str, dict[str, Any]]]) -> list[Row]:
    small, large = replay[plan.small], replay[plan.large]

    def per_event(result: dict[str, Any]) -> float:
        return float(result["seconds"]) / float(result["events"])

    rows = [
        Row(
            case="scale",
            variant=f"replay (decrypt+fold) {label(size)}",
            unit="events/s",
            samples=[found["replay"]["events"] / found["replay"]["seconds"]],
            baseline=[found["raw"]["events"] / found["raw"]["seconds"]],
            baseline_name="psycopg raw read",
            note=f"peak RSS {found['replay']['peak_rss_mib']:.0f} MiB",
        )
        for size, found in ((plan.small, small), (plan.large, large))
    ]
    rows.append(
        Row(
            case="scale",
            variant=f"  replay cost/event {label(plan.small)}->{label(plan.large)}",
            unit="x",
            samples=[per_event(large["replay"]) / per_event(small["replay"])],
            target=LINEAR,
            lower_is_better=True,
            note="1.0 = time linear in events; raw read "
            f"{per_event(large['raw']) / per_event(small['raw']):.2f}x",
        )
    )
    rows.append(
        Row(
            case="scale",
            variant=f"  replay peak RSS {label(plan.small)}->{label(plan.large)}",
            unit="x",
            samples=[large["replay"]["peak_rss_mib"] / small["replay"]["peak_rss_mib"]],
            target=FLAT,
            lower_is_better=True,
            note="peak RSS at the large store / at the small",
        )
    )
    return rows
