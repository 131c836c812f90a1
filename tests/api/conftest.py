"""Fixtures of the API tier: the app on the test's settings and application."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from lifecycle.api import create_app
from lifecycle.application import Accounts
from lifecycle.settings import Settings


@pytest.fixture
def client(settings: Settings, accounts: Accounts) -> Iterator[TestClient]:
    with TestClient(create_app(settings, accounts)) as client:
        yield client
