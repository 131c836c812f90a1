"""Fixtures of the read-model tier: one known history on the test's application."""

from __future__ import annotations

import pytest
from projection_history import History, make_history

from lifecycle.application import Accounts
from lifecycle.erasure import ErasureProcess


@pytest.fixture
def history(accounts: Accounts) -> History:
    ErasureProcess(accounts).create_tables()  # the confirmations table the erasure read model joins
    return make_history(accounts)
