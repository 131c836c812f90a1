"""Fixtures of the fault tier: servers of its own, and the erasure pipeline as real processes.

The fault tests stop, restart and cut their servers, so they never use the shared ones: one
throwaway PostgreSQL cluster and one Kafka broker (`tests/faults/servers.py`), each started
once per run, when a test first asks for it, on the one xdist worker that runs every test
using them (the root conftest groups them). On them `lifecycle relay`, `lifecycle consume
scout|chat|mail`, `lifecycle erasure` and `lifecycle project` run as processes, started once
per module that asks for the pipeline. A test leaves its servers running.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pipeline import Pipeline
from servers import ThrowawayKafka, ThrowawayPostgres
from support import SmtpSink, smtp_sink


@pytest.fixture(scope="session")
def fault_postgres() -> Iterator[ThrowawayPostgres]:
    postgres = ThrowawayPostgres()
    try:
        yield postgres
    finally:
        postgres.close()


@pytest.fixture(scope="session")
def fault_kafka() -> Iterator[ThrowawayKafka]:
    kafka = ThrowawayKafka()
    try:
        yield kafka
    finally:
        kafka.close()


@pytest.fixture(scope="module")
def fault_smtp() -> Iterator[SmtpSink]:
    with smtp_sink() as sink:
        yield sink


@pytest.fixture(scope="module")
def pipeline(
    fault_postgres: ThrowawayPostgres,
    fault_kafka: ThrowawayKafka,
    fault_smtp: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pipeline]:
    with Pipeline.running(
        fault_postgres, fault_kafka, fault_smtp, tmp_path_factory.mktemp("logs")
    ) as found:
        yield found
