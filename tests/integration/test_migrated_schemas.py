"""The tests' reused PostgreSQL schemas (`support.MigratedSchemas`, behind the
`lifecycle_schema` fixture): a schema handed to the next test is, to pg_dump, the schema a
fresh `lifecycle migrate` makes, whatever the test before it wrote; one whose shape a test
changed is never handed out again."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import psycopg
import pytest
from support import MigratedSchemas

from lifecycle.application import Accounts
from lifecycle.crypto import new_master_key
from lifecycle.settings import Settings
from projections.registry import open_read_models
from projections.runner import Projector

pytestmark = pytest.mark.postgres


@pytest.fixture
def schemas(postgres_url: str) -> Iterator[MigratedSchemas]:
    """A pool of this test's own, so the session's is left as it is."""
    pool = MigratedSchemas(postgres_url)
    yield pool
    pool.close()


def dump(postgres_url: str, schema: str) -> str:
    """Tables, functions, triggers, rows and sequence positions, the schema's name left out."""
    out = subprocess.run(
        ["pg_dump", "--no-owner", f"--schema={schema}", postgres_url],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    # Comments and pg_dump's per-run \\restrict token are not the schema.
    kept = [line for line in out.splitlines() if not line.startswith(("--", "\\"))]
    return "\n".join(kept).replace(schema, "<schema>")


def use(postgres_url: str, schema: str) -> None:
    """What tests do to a schema: events, keys, a purge's destroyed key, read models moved
    on, a service's schema beside it."""
    settings = Settings(
        database_url=postgres_url,
        database_schema=schema,
        kafka_bootstrap=None,
        master_key=new_master_key(),
    )
    accounts = Accounts(env=settings.application_env())
    try:
        member = accounts.register(email="reuse@example.jp", display_name="R", consent_version="1")
        accounts.receive_scout(member, scout_id="s", company_id="c", job_id="j")
        accounts.request_withdrawal(member, reason="other")
        for model in open_read_models(accounts.database):
            Projector(accounts, model).catch_up()
    finally:
        accounts.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}_scout")
        conn.execute(f"CREATE TABLE {schema}_scout.held (id int)")


def test_a_schema_given_back_is_handed_out_as_a_fresh_one_would_be(
    schemas: MigratedSchemas, postgres_url: str
) -> None:
    schema = schemas.take()
    fresh = dump(postgres_url, schema)
    use(postgres_url, schema)
    assert dump(postgres_url, schema) != fresh  # the test wrote something

    schemas.give_back(schema)
    again = schemas.take()

    assert again == schema
    assert dump(postgres_url, again) == fresh
    with psycopg.connect(postgres_url) as conn:
        companion = conn.execute("SELECT to_regnamespace(%s)", (f"{schema}_scout",)).fetchone()
    assert companion == (None,)
    schemas.give_back(again)


def test_a_schema_whose_shape_a_test_changed_is_dropped(
    schemas: MigratedSchemas, postgres_url: str
) -> None:
    schema = schemas.take()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {schema}.account_keys ADD COLUMN note text")

    schemas.give_back(schema)

    assert schemas.free == []
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT to_regnamespace(%s)", (schema,)).fetchone() == (None,)
    assert schemas.take() != schema


def test_schemas_of_other_names_are_handed_out_again_too(
    schemas: MigratedSchemas, postgres_url: str
) -> None:
    """Function bodies and index definitions name their schema: a second schema of a worker
    must still compare as the shape of its first, or each test would migrate a new one."""
    first, second = schemas.take(), schemas.take()
    use(postgres_url, second)

    schemas.give_back(second)
    schemas.give_back(first)

    assert sorted(schemas.free) == sorted([first, second])
    assert schemas.take() == first and schemas.take() == second
