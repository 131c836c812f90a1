"""`python -m bench [--quick] [--json PATH]
[--cases commands,http,relay,erasure,replay,kit,keys,export,scale] [--tracing]`.

Each case is the module `bench/case_<name>.py` and its `run(ctx)`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.core import (
    Context,
    Row,
    log,
    machine_info,
    render_report,
    services_up,
    versions,
    write_json,
)
from lifecycle.logs import configure_logging

CASES = ("commands", "http", "relay", "erasure", "replay", "kit", "keys", "export", "scale")


def case_runner(name: str) -> Callable[[Context], list[Row]]:
    if name not in CASES:
        raise ValueError(f"unknown case {name!r}")
    runner: Callable[[Context], list[Row]] = importlib.import_module(f"bench.case_{name}").run
    return runner


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Hot paths of the lifecycle service against the rawest equivalent, as ratios.",
    )
    parser.add_argument("--quick", action="store_true", help="a run of under two minutes")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this path")
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated subset of {','.join(CASES)} (default: all)",
    )
    parser.add_argument("--repeats", type=int, help="measured repetitions per variant")
    parser.add_argument("--seconds", type=float, help="length of one measured repetition")
    parser.add_argument(
        "--replay-sizes",
        help="log sizes for the replay case, e.g. 10000,100000,1000000 "
        "(default: 10k,100k quick; 10k,100k,1M full)",
    )
    parser.add_argument(
        "--no-services", action="store_true", help="do not run `scripts/services up` first"
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="tracing on (spans made and dropped; bench/tracing_switch.py), to compare with a run "
        "without",
    )
    args = parser.parse_args(argv)
    args.case_list = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.case_list if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("json", "WARNING")
    if args.tracing:
        from bench.tracing_switch import enable

        enable()
    started = datetime.now(UTC)
    clock = time.perf_counter()
    if args.no_services:
        from bench.core import services_env

        env = services_env()
    else:
        env = services_up()
    database_url = env.get("LIFECYCLE_DATABASE_URL", "")
    kafka_bootstrap = env.get("LIFECYCLE_KAFKA_BOOTSTRAP", "")
    if not database_url.startswith("postgres"):
        print("bench: no PostgreSQL (LIFECYCLE_DATABASE_URL) after services up", file=sys.stderr)
        return 2
    ctx = Context(
        quick=args.quick,
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        repeats=args.repeats or (3 if args.quick else 5),
        seconds=args.seconds or (0.7 if args.quick else 3.0),
        warmup_seconds=0.3 if args.quick else 2.0,
        machine=machine_info(),
        versions=versions(database_url),
    )
    if args.replay_sizes:
        ctx.extra["replay_sizes"] = {
            "sizes": [int(float(x)) for x in args.replay_sizes.split(",") if x.strip()]
        }
    rows: list[Row] = []
    failed: list[str] = []
    for name in args.case_list:
        log(f"case {name}")
        case_started = time.perf_counter()
        try:
            rows.extend(case_runner(name)(ctx))
        except Exception as error:
            failed.append(name)
            traceback.print_exc()
            ctx.note(name, f"case failed: {type(error).__name__}: {error}")
        log(f"case {name} took {time.perf_counter() - case_started:.0f}s")
    ctx.extra["run"] = {"seconds": time.perf_counter() - clock, "failed_cases": failed}
    print(render_report(ctx, rows))
    print(f"\ntotal {time.perf_counter() - clock:.0f}s")
    if args.json:
        write_json(args.json, ctx, rows, started)
        print(f"json: {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
