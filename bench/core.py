"""What every case shares: results and their table, the machine and versions, services, schemas.

A case is a function `run(ctx) -> list[Row]`. A row holds the repeated measurements of one
variant and, where there is one, the repeated measurements of its baseline taken in the same
run; the ratio compares the two medians, so drift of the shared machine cancels out.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import psycopg

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "scripts" / "services"
SERVICES_ENV = ROOT / ".services" / "env"
KAFKA_LIBS = ROOT / ".services" / "kafka-libs"

TargetKind = Literal["ratio_at_least", "ratio_at_most", "at_most", "at_least"]


@dataclass(frozen=True)
class Target:
    """What a row must reach: a ratio to its baseline, or a bound on its own median."""

    kind: TargetKind
    value: float

    def describe(self, unit: str) -> str:
        if self.kind == "ratio_at_least":
            return f"ratio>={self.value:g}"
        if self.kind == "ratio_at_most":
            return f"ratio<={self.value:g}"
        if self.kind == "at_most":
            return f"<={self.value:g} {unit}"
        return f">={self.value:g} {unit}"

    def met(self, median: float, ratio: float | None) -> bool | None:
        if self.kind == "ratio_at_least":
            return None if ratio is None else ratio >= self.value
        if self.kind == "ratio_at_most":
            return None if ratio is None else ratio <= self.value
        if self.kind == "at_most":
            return median <= self.value
        return median >= self.value


@dataclass
class Row:
    """One variant of one case: repeated samples, and its baseline's samples from the same run."""

    case: str
    variant: str
    unit: str
    samples: list[float]
    baseline: list[float] | None = None
    baseline_name: str = ""
    target: Target | None = None
    note: str = ""
    # The ratio is always variant median / baseline median: for a rate, the share of the raw
    # rate reached (1.0 = as fast); for a latency or a size, how many times the raw one.
    lower_is_better: bool = False

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline) if self.baseline else None

    @property
    def ratio(self) -> float | None:
        base = self.baseline_median
        if base is None or not self.samples or base == 0:
            return None
        return self.median / base

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        if not self.samples:
            return "n/a"
        met = self.target.met(self.median, self.ratio)
        if met is None:
            return "n/a"
        return "pass" if met else "MISS"

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            median=self.median,
            min=min(self.samples) if self.samples else None,
            max=max(self.samples) if self.samples else None,
            baseline_median=self.baseline_median,
            ratio=self.ratio,
            verdict=self.verdict,
            target=None if self.target is None else self.target.describe(self.unit),
        )
        return data


@dataclass
class Context:
    """Run-wide settings handed to every case."""

    quick: bool
    database_url: str
    kafka_bootstrap: str
    repeats: int
    seconds: float
    warmup_seconds: float
    machine: dict[str, Any]
    versions: dict[str, str]
    notes: dict[str, list[str]] = field(default_factory=dict)
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)

    def note(self, case: str, text: str) -> None:
        """A line printed under the table (what was measured, what bounds it)."""
        self.notes.setdefault(case, []).append(text)
        log(f"  note: {text}")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Statistics


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (share in 0..1) of unsorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))
    return ordered[rank]


# The table


COLUMNS = (
    "case",
    "variant",
    "median",
    "min",
    "max",
    "unit",
    "baseline (median)",
    "ratio",
    "target",
    "",
    "note",
)


def fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table_lines(rows: list[Row]) -> list[str]:
    """The result table as text lines, one line per row, columns aligned."""
    cells = [list(COLUMNS)]
    for row in rows:
        base = row.baseline_median
        cells.append(
            [
                row.case,
                row.variant,
                fmt(row.median),
                fmt(min(row.samples)) if row.samples else "-",
                fmt(max(row.samples)) if row.samples else "-",
                row.unit,
                "-" if base is None else f"{fmt(base)} ({row.baseline_name})",
                "-" if row.ratio is None else f"{row.ratio:.3f}",
                "" if row.target is None else row.target.describe(row.unit),
                row.verdict,
                row.note,
            ]
        )
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    numeric = {2, 3, 4, 7}
    lines = []
    for index, line in enumerate(cells):
        parts = [
            cell.rjust(widths[i]) if i in numeric and index else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        lines.append("  ".join(parts).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return lines


def render_report(ctx: Context, rows: list[Row]) -> str:
    out = [header_line(ctx), ""]
    out.extend(table_lines(rows))
    if ctx.notes:
        out.append("")
        for case, lines in ctx.notes.items():
            for line in lines:
                out.append(f"[{case}] {line}")
    return "\n".join(out)


def header_line(ctx: Context) -> str:
    m, v = ctx.machine, ctx.versions
    machine = (
        f"machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']:.1f} GiB memory, "
        f"load {m['loadavg']} at start"
    )
    versions = "versions: " + ", ".join(f"{name} {ver}" for name, ver in v.items())
    mode = "quick" if ctx.quick else "full"
    return (
        f"{machine}\n{versions}\nrun: {mode}, {ctx.repeats} repeats of {ctx.seconds:g}s "
        f"after {ctx.warmup_seconds:g}s warm-up (unless a case says otherwise)"
    )


def write_json(path: Path, ctx: Context, rows: list[Row], started: datetime) -> None:
    document = {
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "quick": ctx.quick,
        "machine": ctx.machine,
        "versions": ctx.versions,
        "rows": [row.as_json() for row in rows],
        "notes": ctx.notes,
        "extra": ctx.extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


# Machine and versions


def machine_info() -> dict[str, Any]:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": memory_kib / 1024 / 1024,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "platform": platform.platform(),
    }


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "missing"


def versions(database_url: str) -> dict[str, str]:
    found = {
        "python": platform.python_version(),
        "eventsourcing": package_version("eventsourcing"),
        "postgres": postgres_version(database_url),
        "kafka": kafka_version(),
        "kafka-python": package_version("kafka-python"),
        "psycopg": package_version("psycopg"),
        "fastapi": package_version("fastapi"),
        "uvicorn": package_version("uvicorn"),
        "cryptography": package_version("cryptography"),
    }
    return found


def postgres_version(database_url: str) -> str:
    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]).split()[0] if row else "unknown"
    except psycopg.Error:
        return "unreachable"


def kafka_version() -> str:
    stamp = KAFKA_LIBS / ".stamp"
    if stamp.exists():
        found = re.search(r"kafka=(\S+)", stamp.read_text())
        if found:
            return found.group(1)
    jars = sorted(KAFKA_LIBS.glob("kafka-clients-*.jar"))
    return jars[-1].stem.removeprefix("kafka-clients-") if jars else "unknown"


# Services and schemas


def services_up() -> dict[str, str]:
    """Start (or find running) PostgreSQL and Kafka via the project's script; their addresses."""
    log("scripts/services up")
    subprocess.run([str(SERVICES), "up"], cwd=ROOT, check=True)
    return services_env()


def services_env() -> dict[str, str]:
    found: dict[str, str] = {}
    if SERVICES_ENV.exists():
        for line in SERVICES_ENV.read_text().splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            if value:
                found[name.strip()] = value.strip().strip("'\"")
    found.update({k: v for k, v in os.environ.items() if k.startswith("LIFECYCLE_")})
    return found


@contextmanager
def fresh_schema(database_url: str, case: str) -> Iterator[str]:
    """A PostgreSQL schema of its own for one case, migrated (`lifecycle migrate`), dropped
    afterwards."""
    from lifecycle.bootstrap import migrate_lifecycle
    from lifecycle.settings import Settings

    schema = f"bench_{case}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    migrate_lifecycle(Settings(database_url=database_url, database_schema=schema))
    try:
        yield schema
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def bench_env() -> dict[str, str]:
    """Environment for subprocesses: the repository on the path, quiet Python warnings."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    return env


# Driving concurrent callers


def run_callers(
    callers: int,
    seconds: float,
    operation: Callable[[int, int], object],
) -> tuple[float, int]:
    """`callers` threads call `operation(caller, n)` until `seconds` pass; (ops/s, errors).

    The clock starts when every thread is ready and stops when the last one finished its
    operation in flight, so the rate counts whole operations only.
    """
    counts = [0] * callers
    errors = [0] * callers
    ready = threading.Barrier(callers + 1)
    stop_at = [0.0]

    def caller(index: int) -> None:
        ready.wait()
        done = failed = 0
        while time.perf_counter() < stop_at[0]:
            try:
                operation(index, done + failed)
                done += 1
            except Exception:
                failed += 1
        counts[index], errors[index] = done, failed

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(callers)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + seconds
    started = time.perf_counter()
    ready.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return sum(counts) / elapsed, sum(errors)


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM).

    Not ru_maxrss: Linux carries that over from the parent across fork and exec, so a child
    of a big parent would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
