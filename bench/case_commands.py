"""Case 1, commands: registrations and preference edits per second through the application.

Personal-field encryption is on (it always is: `Accounts` seals with per-account keys).
1 and 16 concurrent callers are threads of this process calling `Accounts` directly.
Baseline: `pgbench` running a one-row INSERT of the command's main stored event (same columns,
same bytea size) with the same client counts, in the same run.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from bench.core import Context, Row, Target, fresh_schema, log, run_callers
from bench.tracing_switch import traced
from bench.workload import (
    EVENTS_PER_ACCOUNT,
    bench_settings,
    fast_registration_kwargs,
    generate_log,
    open_accounts,
    unique_email,
)
from lifecycle.application import Accounts
from lifecycle.domain import Account

CALLERS = (1, 16)
# Issue 11's targets, on the way to 0.5: the plain library with no encryption saves about a
# quarter of the raw rate.
TARGET_AT_16 = Target("ratio_at_least", 0.25)
TARGET_AT_1 = Target("ratio_at_least", 0.25)


def pgbench_path() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), key=_version_key)
    return found[-1] if found else None


def _version_key(path: str) -> int:
    match = re.search(r"/postgresql/(\d+)/", path)
    return int(match.group(1)) if match else 0


class Pgbench:
    """Runs a one-row INSERT script under pgbench against a table shaped like the event store."""

    def __init__(self, database_url: str, schema: str) -> None:
        binary = pgbench_path()
        if binary is None:
            raise RuntimeError("pgbench not found under /usr/lib/postgresql/*/bin")
        self.binary = binary
        parts = urlsplit(database_url)
        self.args = [
            "-h",
            parts.hostname or "127.0.0.1",
            "-p",
            str(parts.port or 5432),
            "-U",
            unquote(parts.username or "postgres"),
        ]
        self.dbname = unquote(parts.path.lstrip("/"))
        self.env = {**os.environ, "PGPASSWORD": unquote(parts.password or "")}
        self.schema = schema
        self._dir = tempfile.TemporaryDirectory(prefix="bench-pgbench-")

    def create_table(self, database_url: str) -> None:
        import psycopg

        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                f"CREATE TABLE {self.schema}.raw_events (originator_id uuid NOT NULL, "
                "originator_version bigint NOT NULL, topic text, state bytea, "
                "notification_id bigserial, PRIMARY KEY (originator_id, originator_version))"
            )
            conn.execute(f"CREATE UNIQUE INDEX ON {self.schema}.raw_events (notification_id ASC)")

    def script(self, name: str, topic: str, size: int) -> Path:
        path = Path(self._dir.name) / f"{name}.sql"
        path.write_text(
            f"INSERT INTO {self.schema}.raw_events "
            "(originator_id, originator_version, topic, state) "
            f"VALUES (gen_random_uuid(), 1, '{topic}', "
            f"decode('{'ab' * size}', 'hex'));\n"
        )
        return path

    def tps(self, script: Path, clients: int, seconds: float, *, expected: float = 0) -> float:
        """Transactions/s over about `seconds`: `-T` for whole seconds, else `-t` sized from
        the `expected` rate (pgbench's -T counts whole seconds only)."""
        if seconds >= 1 or expected <= 0:
            length = ["-T", str(max(1, round(seconds)))]
        else:
            length = ["-t", str(max(20, int(expected * seconds / clients)))]
        command = [
            self.binary,
            *self.args,
            "-n",
            "-c",
            str(clients),
            "-j",
            str(clients),
            *length,
            "-f",
            str(script),
            self.dbname,
        ]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, check=False)
        match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
        if done.returncode != 0 or match is None:
            raise RuntimeError(f"pgbench failed: {done.stderr.strip() or done.stdout.strip()}")
        return float(match.group(1))

    def close(self) -> None:
        self._dir.cleanup()


def _stored_size(accounts: Accounts, event_type: type[Any], *, after: int = 0) -> tuple[str, int]:
    """Topic and mean stored size of this kind of event, as the mapper wrote them."""
    from eventsourcing.utils import get_topic

    topic = get_topic(event_type)
    with accounts.database.transaction(commit=False) as cursor:
        row = cursor.execute(
            f"SELECT avg(length(state))::int FROM {accounts.database.events_table} "
            "WHERE topic = %s AND notification_id > %s",
            (topic, after),
        ).fetchone()
    return topic, int(row[0]) if row and row[0] else 0


class Subject:
    """One application under test: its operations, bound to its own schema."""

    def __init__(self, ctx: Context, label: str, accounts: Accounts) -> None:
        self.label = label
        self.accounts = accounts
        # Members to edit, made in bulk (see generate_log), enough that each is edited only
        # a few times: an edit loads the whole account, so a handful of long-lived accounts
        # would turn the case into a test of replaying ever longer histories.
        self.pool = generate_log(
            accounts, EVENTS_PER_ACCOUNT * (1_600 if ctx.quick else 12_000), keep_ids=True
        ).account_ids
        self.tickets = itertools.count(1)
        self.samples: dict[tuple[str, int], list[float]] = {}
        self.errors: dict[tuple[str, int], int] = {}
        self.batch_counts: dict[tuple[str, int], list[int]] = {}

    def register(self, caller: int, n: int) -> object:
        return self.accounts.register(**fast_registration_kwargs(unique_email(f"c{caller}")))

    def edit(self, caller: int, n: int) -> object:
        # Consecutive tickets go to different members, so concurrent callers never edit the
        # same one; a new value every time, so every edit records a PreferencesEdited event.
        # Work history is personal, so the edit is sealed like a member's real edit would be.
        ticket = next(self.tickets)
        return self.accounts.edit_preferences(
            self.pool[ticket % len(self.pool)],
            desired={"locations": ["Tokyo"], "min_salary": 5_000_000 + ticket},
            work_history=[{"company": "Acme KK", "title": f"Engineer {ticket}"}],
        )

    def operation(self, command: str) -> Callable[[int, int], object]:
        return traced(self.register if command == "register" else self.edit)

    def sample(self, command: str, callers: int, seconds: float) -> None:
        writer = self.accounts.group_commit
        batches, saved = writer.batches, writer.saved_requests
        rate, failed = run_callers(callers, seconds, self.operation(command))
        self.samples.setdefault((command, callers), []).append(rate)
        self.errors[(command, callers)] = self.errors.get((command, callers), 0) + failed
        counted = self.batch_counts.setdefault((command, callers), [0, 0])
        counted[0] += writer.batches - batches
        counted[1] += writer.saved_requests - saved

    def mean_batch(self, command: str, callers: int) -> float:
        """Saves per group-commit transaction while sampling (GroupCommitWriter counters)."""
        batches, saved = self.batch_counts.get((command, callers), [0, 0])
        return saved / batches if batches else 0.0


def _sizes(accounts: Accounts) -> dict[str, tuple[str, int]]:
    """Topic and stored size of each command's main event, from one real command each."""
    after = accounts.recorder.max_notification_id() or 0
    account_id = accounts.register(**fast_registration_kwargs(unique_email("size")))
    accounts.edit_preferences(
        account_id,
        desired={"locations": ["Tokyo"], "min_salary": 5_000_001},
        work_history=[{"company": "Acme KK", "title": "Engineer 1"}],
    )
    return {
        "register": _stored_size(accounts, Account.Registered, after=after),
        "edit": _stored_size(accounts, Account.PreferencesEdited, after=after),
    }


def run(ctx: Context) -> list[Row]:
    """Each repetition measures every target back to back (app, group commit, pgbench), so
    the load of the shared machine at that moment weighs on all of them alike."""
    with contextlib.ExitStack() as stack:
        schema = stack.enter_context(fresh_schema(ctx.database_url, "commands"))
        plain = open_accounts(bench_settings(ctx.database_url, schema))
        stack.callback(plain.close)
        targets = [Subject(ctx, "Accounts", plain)]
        # The same application with group commit off (batches of one), for comparison.
        alone_schema = stack.enter_context(fresh_schema(ctx.database_url, "commands_alone"))
        alone = Accounts(
            env=bench_settings(ctx.database_url, alone_schema).application_env(), max_batch=1
        )
        stack.callback(alone.close)
        targets.append(Subject(ctx, "no-group-commit", alone))
        sizes = _sizes(plain)
        pgbench = Pgbench(ctx.database_url, schema)
        stack.callback(pgbench.close)
        pgbench.create_table(ctx.database_url)
        baselines: dict[tuple[str, int], list[float]] = {}
        for command, (topic, size) in sizes.items():
            script = pgbench.script(command, topic, size)
            for callers in CALLERS:
                # Group commit changes nothing for a lone caller; --quick skips that variant.
                measured = [
                    t for t in targets if not (ctx.quick and callers == 1 and t is not targets[0])
                ]
                names = ", ".join(t.label for t in measured)
                log(f"commands: {command}, {callers} callers: {names}, pgbench")
                for target in measured:
                    run_callers(callers, ctx.warmup_seconds, target.operation(command))
                expected = pgbench.tps(script, callers, 1)
                for _ in range(ctx.repeats):
                    for target in measured:
                        target.sample(command, callers, ctx.seconds)
                    baselines.setdefault((command, callers), []).append(
                        pgbench.tps(script, callers, ctx.seconds, expected=expected)
                    )
    rows: list[Row] = []
    for command, (_, size) in sizes.items():
        for callers in CALLERS:
            for target in targets:
                if (command, callers) not in target.samples:
                    continue
                errors = target.errors[(command, callers)]
                suffix = "" if target is targets[0] else f" {target.label}"
                note = f"stored event {size} B" if target is targets[0] else ""
                if callers > 1:
                    note += f"; mean batch {target.mean_batch(command, callers):.1f}"
                if errors:
                    note += f"; {errors} failed"
                rows.append(
                    Row(
                        case="commands",
                        variant=f"{command} c={callers}{suffix}",
                        unit="ops/s",
                        samples=target.samples[(command, callers)],
                        baseline=baselines[(command, callers)],
                        baseline_name=f"pgbench INSERT {size}B c={callers}",
                        target=TARGET_AT_16 if callers == 16 else TARGET_AT_1,
                        note=note.strip("; "),
                    )
                )
    ctx.note(
        "commands",
        "callers are threads of one Python process calling Accounts.register / "
        "Accounts.edit_preferences; baseline is pgbench (-n -c N -j N, -T s or -t n) "
        "inserting one row of the same size into a table shaped like the event store, "
        "measured right after the app in every repetition; a registration writes 3 events "
        "in 2 aggregates plus a key row in one transaction, an edit 1 event; the application "
        "group-commits concurrent saves (`mean batch`: saves per transaction, from the "
        "GroupCommitWriter counters), `no-group-commit` is the same with max_batch=1",
    )
    return rows
