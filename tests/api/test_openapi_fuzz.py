"""Schemathesis runs the whole OpenAPI against the app, on both backends, with every check.

It fails on a server error, an undocumented status or content type, a response that does not
match its schema, a schema-valid request refused and a schema-violating request accepted.
One app per backend serves every operation, and examples are bounded per operation and mode,
so the suite grows by well under a minute (`LIFECYCLE_FUZZ_EXAMPLES` asks for more).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.generation.modes import GenerationMode
from support import TOKENS, unique_tag

from lifecycle.api import create_app
from lifecycle.api.auth import role_for_path
from lifecycle.application import Accounts
from lifecycle.bootstrap import migrate_lifecycle
from lifecycle.crypto import new_master_key
from lifecycle.settings import Settings, token_digest

EXAMPLES = int(os.environ.get("LIFECYCLE_FUZZ_EXAMPLES", "8"))
# Rules across fields that no JSON Schema can state (`to` not before `from` in a work history,
# a birth year not in the future; a withdrawal's reason details belong to its reason): a
# schema-valid body may still break them, and gets 422.
# Withdrawal: each reason detail must belong to the reason.
CROSS_FIELD_RULES = {
    ("POST", "/v1/accounts"),
    ("PATCH", "/v1/accounts/{account_id}/preferences"),
    ("POST", "/v1/accounts/{account_id}/withdrawal"),
}
# Answers to a schema-valid request that are business outcomes, not a broken contract.
ACCEPTED = ["2xx", "401", "403", "404", "409", "410"]


def _takes_idempotency_key(operation: dict[str, Any]) -> bool:
    return any(p.get("name") == "Idempotency-Key" for p in operation.get("parameters", []))


# The fuzzer sends one key with different payloads: 422 `idempotency_key_reused` is the draft's
# answer to that, not a valid request refused (reuse is tested in test_idempotency_keys.py).
KEYED = {
    (method.upper(), path)
    for path, item in create_app(Settings(api_tokens={"0" * 64: "service"}))
    .openapi()["paths"]
    .items()
    for method, operation in item.items()
    if _takes_idempotency_key(operation)
}


class RoleTokens:
    """The token of the role each route group needs (schemathesis' auth provider)."""

    def get(self, case: Any, ctx: Any) -> str | None:
        role = role_for_path(case.path)
        return None if role is None else TOKENS[role]

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def _operations() -> list[tuple[str, str, GenerationMode]]:
    """Every operation of the document, positive always, negative where it takes input."""
    document = create_app(Settings(api_tokens={"0" * 64: "service"})).openapi()
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            found.append((method.upper(), path, GenerationMode.POSITIVE))
            if operation.get("parameters") or operation.get("requestBody"):
                found.append((method.upper(), path, GenerationMode.NEGATIVE))
    return found


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def schema(
    backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """One app per backend for the whole module, and its schema with a token per route group."""
    common: dict[str, Any] = {
        "kafka_bootstrap": None,
        "master_key": new_master_key(),
        "api_tokens": {token_digest(token): role for role, token in TOKENS.items()},
    }
    postgres: tuple[str, str] | None = None
    if backend == "sqlite":
        path: Path = tmp_path_factory.mktemp("fuzz") / "lifecycle.sqlite3"
        settings = Settings(database_url=f"sqlite:///{path}", **common)
    else:
        url: str = request.getfixturevalue("postgres_url")
        postgres = (url, f"t_{unique_tag()}")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {postgres[1]}")
        settings = Settings(database_url=url, database_schema=postgres[1], **common)
    migrate_lifecycle(settings)
    accounts = Accounts(env=settings.application_env())
    try:
        loaded = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings, accounts))
        loaded.auth(refresh_interval=None)(RoleTokens)
        yield loaded
    finally:
        accounts.close()
        if postgres is not None:
            with psycopg.connect(postgres[0], autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {postgres[1]} CASCADE")


@pytest.mark.parametrize(
    ("method", "path", "mode"), _operations(), ids=lambda value: str(getattr(value, "value", value))
)
def test_the_api_keeps_its_openapi(
    schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    accepted = [*ACCEPTED, "422"] if (method, path) in CROSS_FIELD_RULES | KEYED else ACCEPTED
    schema.config.checks.positive_data_acceptance.expected_statuses = accepted
    operation = schema[path][method]

    @hypothesis_settings(
        max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(case=operation.as_strategy(generation_mode=mode, auth_storage=schema.auth))
    def run(case: Any) -> None:
        case.call_and_validate()

    run()
