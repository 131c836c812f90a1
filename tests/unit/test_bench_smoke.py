"""The benchmark's entry point imports and its table reads right (no timing asserted)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

# `bench` is not an installed package: it runs as `python -m bench` from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.__main__ import CASES, parse_args
from bench.core import Context, Row, Target, percentile, render_report, table_lines


def test_every_case_module_imports() -> None:
    for name in CASES:
        module = importlib.import_module(f"bench.case_{name}")
        assert callable(module.run)


def test_arguments() -> None:
    args = parse_args(["--quick", "--cases", "commands,replay", "--json", "out.json"])
    assert args.quick and args.case_list == ["commands", "replay"]
    assert str(args.json) == "out.json"
    with pytest.raises(SystemExit):
        parse_args(["--cases", "nonsense"])


def test_ratios_and_verdicts() -> None:
    rate = Row(
        "c",
        "v",
        "ops/s",
        [90.0, 100.0, 110.0],
        [200.0, 210.0],
        "raw",
        Target("ratio_at_least", 0.5),
    )
    assert rate.median == 100.0 and rate.ratio == pytest.approx(100 / 205)
    assert rate.verdict == "MISS"
    latency = Row("e", "p99", "ms", [300.0, 700.0, 400.0], target=Target("at_most", 500.0))
    assert latency.ratio is None and latency.verdict == "pass"
    assert Row("x", "y", "u", []).verdict == ""
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0


def test_table_has_one_aligned_line_per_row() -> None:
    rows = [
        Row(
            "commands",
            "register c=1",
            "ops/s",
            [1234.5, 1200.0],
            [5000.0],
            "pgbench",
            Target("ratio_at_least", 0.25),
        ),
        Row("erasure", "p99", "ms", [250.0], target=Target("at_most", 500.0), note="n=100"),
    ]
    lines = table_lines(rows)
    assert len(lines) == 2 + len(rows)
    assert lines[0].split()[:3] == ["case", "variant", "median"]
    assert "1,217" in lines[2] and "0.243" in lines[2] and "MISS" in lines[2]
    assert "pass" in lines[3] and "n=100" in lines[3]
    ctx = Context(
        quick=True,
        database_url="postgresql://x@localhost/x",
        kafka_bootstrap="",
        repeats=3,
        seconds=1.0,
        warmup_seconds=0.5,
        machine={"nproc": 2, "cpu_model": "cpu", "memory_gib": 4.0, "loadavg": "0 0 0"},
        versions={"python": "3"},
    )
    report = render_report(ctx, rows)
    assert report.startswith("machine: 2 cores") and "versions: python 3" in report
