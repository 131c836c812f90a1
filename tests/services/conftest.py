"""Fixtures of the service tier: the application services called directly, no HTTP. Kafka is
an in-memory `KafkaInspector` (`FakeKafka`), so each rule is tested without a broker; the
HTTP tier runs the same use cases against the real one."""

from __future__ import annotations

import pytest
from support import FakeKafka


@pytest.fixture
def kafka() -> FakeKafka:
    return FakeKafka()
