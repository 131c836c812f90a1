"""Schema migrations of the read models (component `read-models`, in the lifecycle database).

A read model is derived data: its tables' statements live with the model (`create_statements`),
because a rebuild creates the same tables under a shadow name. So a read model never changes
shape in place: a new shape is a new model name (new tables, filled by `lifecycle project
--rebuild` or by catching up), added by a new migration here; the old model's tables are
dropped by a contracting migration a release later. The statements of a released model stay
as they are, which keeps migration 1 the same on every database.
"""

from __future__ import annotations

from lifecycle.migrator import Component, Migration
from lifecycle.storage import Cursor, Database
from projections.registry import READ_MODELS

COMPONENT = "read-models"


def _first_release(cursor: Cursor, db: Database) -> None:
    for name in (
        "account_directory",
        "erasure_status",
        "withdrawal_reasons",
        "gift_claims",
        "scouts_per_company",
        "hash_chain",
    ):
        READ_MODELS[name](db).create_in(cursor)


READ_MODEL_MIGRATIONS = Component(
    COMPONENT, (Migration(1, "first release: six read models", _first_release),)
)
