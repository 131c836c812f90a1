"""Fixtures of the read-model tier: one known history on the test's application."""

from __future__ import annotations

import pytest
from projection_history import History, make_history

from lifecycle.application import Accounts


@pytest.fixture
def history(accounts: Accounts) -> History:
    return make_history(accounts)
