"""What the service's database says about the erasure pipeline, for `/metrics` and `/readyz`:
the log's head, relays' positions and last publishes, read models' positions, erasures by
state, refused confirmations, handled dead letters. Tables another process creates (the
relay's) may not exist yet: their readings are empty then."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from lifecycle.application import Accounts
from lifecycle.erasure.records import ErasureRefusals
from lifecycle.services.actions import DeadLetterActions
from lifecycle.services.read_models import ReadModels
from lifecycle.storage import read_timestamp
from projections.erasure import ErasureQuery, ErasureStatusView

RELAY_POSITION_TABLE = "relay_position"


class PipelineReadings:
    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts
        self.database = accounts.database

    def check_database(self) -> None:
        """Raises unless the database answers a query."""
        with self.database.transaction(commit=False) as cursor:
            cursor.execute("SELECT 1").fetchone()

    def log_head(self) -> int:
        return ReadModels(self.accounts).log_head()

    def relay_positions(self) -> dict[str, tuple[int, datetime]]:
        """Each relay's stored position and when it last moved."""
        table = self.database.table(RELAY_POSITION_TABLE)
        rows = self._optional_rows(f"SELECT name, position, updated_at FROM {table}")
        return {
            str(name): (int(position), at_utc)
            for name, position, at in rows
            if (at_utc := read_timestamp(at)) is not None  # updated_at is NOT NULL
        }

    def read_model_positions(self) -> dict[str, int]:
        """Positions of the read models that exist here."""
        return {
            name: model.position()
            for name, model in ReadModels(self.accounts).live().items()
            if model.exists()
        }

    def erasure_counts(self, deadline: timedelta) -> dict[str, int]:
        return ErasureQuery(ErasureStatusView(self.database), deadline).counts()

    def refusals(self) -> dict[tuple[str, str], int]:
        try:
            return ErasureRefusals(self.database).totals()
        except Exception:
            return {}

    def dead_letters_handled(self, topic: str) -> set[tuple[int, int]]:
        return DeadLetterActions(self.database).done(topic)

    def _optional_rows(self, statement: str) -> list[tuple[Any, ...]]:
        try:
            with self.database.transaction(commit=False) as cursor:
                return list(cursor.execute(statement).fetchall())
        except Exception:
            return []  # no relay has run against this database yet
