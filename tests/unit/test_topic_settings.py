"""Partitions, replication and the topics' time bounds come from the settings (LIFECYCLE_*)."""

from __future__ import annotations

import pytest

from lifecycle.kafka.admin import DAY_MS, HOUR_MS, TopicSettings, topic_specs
from lifecycle.settings import Settings
from schemas.contract import TopicNames


def test_the_defaults_are_one_broker_and_the_documented_bounds() -> None:
    assert Settings().topic_settings == TopicSettings()
    assert TopicSettings().min_insync_replicas == 1


def test_a_replicated_cluster_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFECYCLE_KAFKA_PARTITIONS", "6")
    monkeypatch.setenv("LIFECYCLE_KAFKA_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("LIFECYCLE_KAFKA_LIFECYCLE_RETENTION_HOURS", "48")
    monkeypatch.setenv("LIFECYCLE_KAFKA_PROFILE_MAX_COMPACTION_LAG_HOURS", "12")
    topics = Settings().topic_settings
    specs = {spec.name: spec for spec in topic_specs(TopicNames(), topics)}
    assert {(s.partitions, s.replication_factor) for s in specs.values()} == {(6, 3)}
    assert {s.configs["min.insync.replicas"] for s in specs.values()} == {"2"}
    names = TopicNames()
    assert specs[names.lifecycle].configs["retention.ms"] == str(2 * DAY_MS)
    assert specs[names.profile].configs["max.compaction.lag.ms"] == str(12 * HOUR_MS)


def test_min_insync_replicas_may_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFECYCLE_KAFKA_REPLICATION_FACTOR", "5")
    monkeypatch.setenv("LIFECYCLE_KAFKA_MIN_INSYNC_REPLICAS", "3")
    assert Settings().topic_settings.min_insync_replicas == 3


def test_nonsense_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFECYCLE_KAFKA_REPLICATION_FACTOR", "0")
    with pytest.raises(ValueError):
        Settings()


def test_more_in_sync_replicas_than_replicas_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFECYCLE_KAFKA_MIN_INSYNC_REPLICAS", "2")
    with pytest.raises(ValueError, match="cannot exceed"):
        Settings()
