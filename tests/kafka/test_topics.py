"""Topic creation against the real broker: partitions, configs read back, idempotence."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from support import unique_tag

from lifecycle.kafka.admin import TopicSettings, ensure_topics, topic_specs
from schemas.contract import TopicNames

SMALL = TopicSettings(
    profile_segment_ms=60_000,
    profile_max_compaction_lag_ms=120_000,
    profile_delete_retention_ms=60_000,
    lifecycle_retention_ms=3_600_000,
    dead_letter_retention_ms=1_800_000,
)


@pytest.fixture
def admin(kafka_bootstrap: str) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=15_000)
    yield client
    client.close()


@pytest.fixture
def names(admin: KafkaAdminClient) -> Iterator[TopicNames]:
    names = TopicNames(prefix=f"t{unique_tag()}.")
    yield names
    existing = set(admin.list_topics())
    admin.delete_topics([name for name in names.all() if name in existing])


def described(admin: KafkaAdminClient, topic: str) -> dict[str, str]:
    found = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all"
    )
    return {name: entry["value"] for name, entry in found["topic"][topic].items()}


def test_creates_every_topic_once_then_reports_them_existing(
    kafka_bootstrap: str, admin: KafkaAdminClient, names: TopicNames
) -> None:
    first = ensure_topics(kafka_bootstrap, names, SMALL)
    assert sorted(first.created) == sorted(names.all())
    assert first.existing == []

    again = ensure_topics(kafka_bootstrap, names, SMALL)
    assert again.created == []
    assert sorted(again.existing) == sorted(names.all())

    for topic in admin.describe_topics(list(names.all())):
        assert topic["error_code"] == 0
        assert len(topic["partitions"]) == 3
        assert all(len(partition["replica_nodes"]) == 1 for partition in topic["partitions"])


def test_configs_read_back_from_the_broker(
    kafka_bootstrap: str, admin: KafkaAdminClient, names: TopicNames
) -> None:
    ensure_topics(kafka_bootstrap, names, SMALL)

    profile = described(admin, names.profile)
    assert profile["cleanup.policy"] == "compact"
    assert profile["min.cleanable.dirty.ratio"] == "0.01"
    assert profile["segment.ms"] == "60000"
    assert profile["max.compaction.lag.ms"] == "120000"
    assert profile["delete.retention.ms"] == "60000"
    assert profile["min.compaction.lag.ms"] == "0"

    lifecycle = described(admin, names.lifecycle)
    assert lifecycle["cleanup.policy"] == "delete"
    assert lifecycle["retention.ms"] == "3600000"

    for service in ("scout", "chat", "mail"):
        confirmations = described(admin, names.erasure_confirmed(service))
        assert confirmations["cleanup.policy"] == "delete"
        assert int(confirmations["retention.ms"]) > 0

    for group in ("scout", "chat", "mail", "lifecycle-erasure"):
        dead_letters = described(admin, names.dlq(group))
        assert dead_letters["cleanup.policy"] == "delete"
        assert dead_letters["retention.ms"] == "1800000"


def test_production_defaults_keep_profile_erasure_inside_the_deadline() -> None:
    settings = TopicSettings()
    specs = {spec.name: spec for spec in topic_specs(TopicNames(), settings)}
    profile = specs["account.profile.v1"].configs
    worst_case_ms = int(profile["segment.ms"]) + int(profile["max.compaction.lag.ms"])
    assert worst_case_ms <= 72 * 3_600_000
    for name in TopicNames().dead_letters:
        configs = specs[name].configs
        assert int(configs["retention.ms"]) + int(configs["segment.ms"]) <= 72 * 3_600_000
    assert TopicSettings(replication_factor=3).min_insync_replicas == 2
    assert settings.min_insync_replicas == 1
