"""Fixtures of the fault tier: servers of its own, and the erasure pipeline as real processes.

The fault tests stop, restart and cut their servers, so they never use the shared ones: one
throwaway PostgreSQL cluster and one Kafka broker per module (`tests/faults/servers.py`), on
which `lifecycle relay`, `lifecycle consume scout|chat|mail`, `lifecycle erasure` and
`lifecycle project` run as processes, each started once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cluster import KafkaCluster
from pipeline import Pipeline
from servers import ThrowawayKafka, ThrowawayPostgres, throwaway_servers
from support import SmtpSink, smtp_sink


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ThrowawayPostgres, ThrowawayKafka]]:
    with throwaway_servers() as both:
        yield both


@pytest.fixture(scope="module")
def fault_smtp() -> Iterator[SmtpSink]:
    with smtp_sink() as sink:
        yield sink


@pytest.fixture(scope="module")
def pipeline(
    servers: tuple[ThrowawayPostgres, ThrowawayKafka],
    fault_smtp: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pipeline]:
    postgres, kafka = servers
    with Pipeline.running(postgres, kafka, fault_smtp, tmp_path_factory.mktemp("logs")) as found:
        yield found


@pytest.fixture(scope="module")
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL cluster of the module's own, without a broker."""
    postgres = ThrowawayPostgres()
    try:
        yield postgres
    finally:
        postgres.close()


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[KafkaCluster]:
    """The three-node cluster (`scripts/services cluster up`), once per run, only when asked."""
    cluster = KafkaCluster()
    try:
        yield cluster
    finally:
        cluster.close()
