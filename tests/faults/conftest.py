"""Fixtures of the fault tier: servers of its own, and the erasure pipeline as real processes.

The fault tests stop, restart and cut their servers, so they never use the shared ones: one
throwaway PostgreSQL cluster and one Kafka broker (`tests/faults/servers.py`), started once per
run when a test first asks for them and left running by each test, and the three-node cluster
(`cluster.py`), which runs for the module that asks for it only: its three idle nodes would
cost about a fifth of a core for the rest of the tier. Under xdist, every test using them runs
on one worker (the root conftest groups them). On them `lifecycle relay`, `lifecycle consume
scout|chat|mail`, `lifecycle erasure` and `lifecycle project` run as processes (`pipeline.py`),
started once per module that asks for the pipeline, each pipeline in a database of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from cluster import KafkaCluster
from pipeline import Pipeline
from servers import ThrowawayKafka, ThrowawayPostgres
from support import SmtpSink, smtp_sink

# The tier's applications keep the production pool, not the other tiers' smaller one (root
# conftest): the cuts and restarts here are waited out by pools sized as in production.
os.environ.pop("LIFECYCLE_DATABASE_POOL_SIZE", None)


@pytest.fixture(scope="session")
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    postgres = ThrowawayPostgres()
    try:
        yield postgres
    finally:
        postgres.close()


@pytest.fixture(scope="session")
def throwaway_kafka() -> Iterator[ThrowawayKafka]:
    kafka = ThrowawayKafka()
    try:
        yield kafka
    finally:
        kafka.close()


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator[KafkaCluster]:
    """The three-node cluster (`scripts/services cluster up`), for the module that asks."""
    cluster = KafkaCluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def fault_smtp() -> Iterator[SmtpSink]:
    with smtp_sink() as sink:
        yield sink


@pytest.fixture(scope="module")
def pipeline(
    throwaway_postgres: ThrowawayPostgres,
    throwaway_kafka: ThrowawayKafka,
    fault_smtp: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pipeline]:
    with Pipeline.running(
        throwaway_postgres, throwaway_kafka, fault_smtp, tmp_path_factory.mktemp("logs")
    ) as found:
        yield found
