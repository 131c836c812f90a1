"""Fixtures of the consumer tier: each service's own store, consumers on threads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Running, StoreFactory, running_consumers, service_stores


@pytest.fixture
def service_store(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[StoreFactory]:
    """`service_store("scout")`: that service's store on the test's backend."""
    url = str(request.getfixturevalue("postgres_url")) if backend == "postgres" else ""
    with service_stores(backend, tmp_path, url) as make:
        yield make


@pytest.fixture
def running() -> Iterator[list[Running]]:
    """Consumers appended here are stopped when the test ends."""
    with running_consumers() as started:
        yield started
