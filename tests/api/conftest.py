"""Fixtures of the API tier: the app on the test's settings and application, and the app on
the real Kafka with this test's topics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from support import unique_topics

from lifecycle.api import create_app
from lifecycle.application import Accounts
from lifecycle.kafka.admin import TopicSettings
from lifecycle.settings import Settings
from schemas.contract import TopicNames


@pytest.fixture
def client(settings: Settings, accounts: Accounts) -> Iterator[TestClient]:
    with TestClient(create_app(settings, accounts)) as client:
        yield client


@pytest.fixture
def names(kafka_bootstrap: str) -> Iterator[TopicNames]:
    with unique_topics(kafka_bootstrap, TopicSettings(partitions=2)) as names:
        yield names


@pytest.fixture
def kafka_client(
    settings: Settings, accounts: Accounts, kafka_bootstrap: str, names: TopicNames
) -> Iterator[TestClient]:
    """The app as configured for Kafka with this test's topic prefix (nothing injected)."""
    with_kafka = settings.model_copy(
        update={"kafka_bootstrap": kafka_bootstrap, "topic_prefix": names.prefix}
    )
    with TestClient(create_app(with_kafka, accounts)) as client:
        yield client
