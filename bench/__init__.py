"""Benchmarks: every hot path against the rawest thing doing the same work, as ratios.

    .venv/bin/python -m bench                       # everything (~25 min), or: make bench
    .venv/bin/python -m bench --quick               # under two minutes
    .venv/bin/python -m bench --json bench.json     # also keep the results as JSON
    .venv/bin/python -m bench --cases commands,http,relay,erasure,replay
    .venv/bin/python -m bench --cases replay --replay-sizes 10000,100000,1000000

It runs `scripts/services up` first (local PostgreSQL and Kafka; `--no-services` skips it),
gives each case a PostgreSQL schema of its own (dropped afterwards) and Kafka topics of its
own (deleted afterwards), warms each variant up, repeats it, and prints one row per variant:
median, min, max, unit, the baseline's median measured in the same run, the ratio of the
two medians, the target and pass/MISS. Absolute numbers drift on a shared machine; the
ratios are what to compare between runs. The header names the machine and the versions.

Cases (bench/case_*.py): `commands` (Accounts vs pgbench), `http` (POST /v1/accounts vs a
bare FastAPI route, driven by wrk), `relay` (log to Kafka vs raw kafka-python, and Kafka's
own ProducerPerformance), `erasure` (WithdrawalRequested to Purged through the five worker
processes), `replay` (decrypt-and-fold replay and a projection rebuild vs raw psycopg reads,
at 10k/100k/1M events).
"""
