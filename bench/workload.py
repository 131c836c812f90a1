"""The members the benchmark registers, the application it drives, and fast log generation."""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresDatastore

from lifecycle.application import Accounts
from lifecycle.bootstrap import migrate_lifecycle
from lifecycle.crypto import KeyVault, PersonalDataMapper, holder_token, new_master_key
from lifecycle.domain import Account
from lifecycle.email_claim import EmailClaim
from lifecycle.settings import Settings, token_digest

SERVICE_TOKEN = "bench-service-token"  # a benchmark-only bearer token

# A complete registration, as a member's client sends it (the HTTP case posts exactly this).
REGISTRATION: dict[str, Any] = {
    "display_name": "Suzuki Ichiro",
    "phone": "090-1234-5678",
    "profile": {"birth_year": 1990, "prefecture": "Tokyo", "job_title": "Backend engineer"},
    "work_history": [
        {"company": "Acme KK", "title": "Engineer", "from": "2014-04-01", "to": "2019-03-31"},
        {"company": "Example Inc", "title": "Senior engineer", "from": "2019-04-01"},
    ],
    "desired": {
        "locations": ["Tokyo", "Remote"],
        "industries": ["IT"],
        "job_types": ["full_time"],
        "min_salary": 8_000_000,
    },
    "notifications": {"scouts": True, "recommendations": False, "notices": True},
    "consent_version": "2024-04",
    "channel": "app",
}


def registration_body(email: str) -> dict[str, Any]:
    return {"email": email, **REGISTRATION}


def registration_kwargs(email: str) -> dict[str, Any]:
    """Keyword arguments for `Accounts.register`, exactly as the HTTP route passes them."""
    # Imported here: the API package pulls in FastAPI, a second of start-up for subprocesses.
    from lifecycle.api.models import RegisterRequest

    return RegisterRequest.model_validate(registration_body(email)).to_domain()


@functools.cache
def _template() -> dict[str, Any]:
    return registration_kwargs("template@example.com")


def fast_registration_kwargs(email: str) -> dict[str, Any]:
    """The same as `registration_kwargs` without validating the body again."""
    template = _template()
    kwargs = dict(template)
    kwargs["email"] = email
    kwargs["work_history"] = [dict(item) for item in template["work_history"]]
    kwargs["profile"] = dict(template["profile"])
    kwargs["desired"] = dict(template["desired"])
    kwargs["notifications"] = dict(template["notifications"])
    return kwargs


def unique_email(tag: str = "m") -> str:
    return f"{tag}-{uuid.uuid4().hex}@example.com"


def bench_settings(database_url: str, schema: str, master_key: str | None = None) -> Settings:
    return Settings(
        database_url=database_url,
        database_schema=schema,
        master_key=master_key or new_master_key(),
        api_tokens={token_digest(SERVICE_TOKEN): "service"},
        log_format="json",
        log_level="WARNING",
    )


def open_accounts(settings: Settings) -> Accounts:
    migrate_lifecycle(settings)  # idempotent: `lifecycle migrate` before the first start
    return Accounts(env=settings.application_env())


@contextmanager
def schema_with_log(database_url: str, case: str, events: int) -> Iterator[Settings]:
    """The settings of a fresh schema (bench.core.fresh_schema) holding a generated log of
    about `events` events; the schema is dropped afterwards."""
    from bench.core import fresh_schema

    with fresh_schema(database_url, case) as schema:
        settings = bench_settings(database_url, schema)
        accounts = open_accounts(settings)
        try:
            generate_log(accounts, events)
        finally:
            accounts.close()
        yield settings


# Fast log generation: the mapper's own stored events, written with COPY.


class _PreparedKeys:
    """Stands in for the KeyVault while generating: keys made in memory, written in bulk."""

    def __init__(self, vault: KeyVault) -> None:
        self.vault = vault
        self.keys: dict[UUID, bytes] = {}
        self.new_rows: list[tuple[UUID, bytes]] = []

    def new_key(self, account_id: UUID) -> tuple[bytes, bytes]:
        key = AESGCM.generate_key(bit_length=256)
        wrapped = self.vault.keyring.wrap(key, account_id.bytes)
        self.keys[account_id] = key
        self.new_rows.append((account_id, wrapped))
        return key, wrapped

    def find_key(self, account_id: UUID) -> bytes | None:
        return self.keys.get(account_id)


@dataclass
class GeneratedLog:
    events: int
    account_events: int
    accounts: int
    seconds: float
    stored_bytes: int
    account_ids: list[UUID] = field(default_factory=list)


EVENTS_PER_ACCOUNT = 6  # Registered, claim Created+Claimed, PreferencesEdited, 2 ScoutReceived
REGISTERED_EVENTS = 3  # Registered, claim Created+Claimed


def _member(
    index: int, now: datetime, registered_only: bool
) -> tuple[UUID, list[Any], list[Any], list[Any]]:
    """One member's events: (id, registration + claim, edit, scouts)."""
    account = Account.register(**fast_registration_kwargs(f"gen-{index}@example.com"))
    claim = EmailClaim.open(uuid.uuid4())
    # A holder as the application derives it (the key here is a stand-in: nothing opens it).
    claim.claim(holder_token(os.urandom(32), claim.id))
    first = [*account.collect_events(), *claim.collect_events()]
    if registered_only:
        return account.id, first, [], []
    parts: dict[str, Any] = {"desired": {**account.desired, "min_salary": 9_000_000}}
    if index % 4 == 0:
        parts["notifications"] = {"scouts": False}
    account.edit_preferences(**parts)
    edits = list(account.collect_events())
    for n in range(2):
        account.receive_scout(
            scout_id=f"s-{index}-{n}",
            company_id=f"c-{index % 500}",
            job_id=f"j-{index}-{n}",
            received_at=now,
        )
    return account.id, first, edits, list(account.collect_events())


def _copy_in(
    datastore: PostgresDatastore,
    accounts: Accounts,
    key_rows: list[tuple[UUID, bytes]],
    stored: list[StoredEvent],
) -> None:
    database = accounts.database
    with datastore.transaction(commit=True) as cursor:
        with cursor.copy(
            f"COPY {database.table('account_keys')} (account_id, wrapped_key) "
            "FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["uuid", "bytea"])
            for row in key_rows:
                copy.write_row(row)
        with cursor.copy(
            f"COPY {database.events_table} (originator_id, originator_version, topic, state) "
            "FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["uuid", "int8", "text", "bytea"])
            for s in stored:
                copy.write_row((s.originator_id, s.originator_version, s.topic, s.state))


def generate_log(
    accounts: Accounts,
    events: int,
    *,
    batch_accounts: int = 2000,
    keep_ids: bool = False,
    registered_only: bool = False,
    on_batch: Callable[[list[Any]], None] | None = None,
) -> GeneratedLog:
    """Append about `events` events (a realistic mix) to the application's log, fast.

    The application's own mapper seals and encodes every event (same bytes a save would
    write) and the stored events go in with COPY; each account's data key is created in
    memory, wrapped like the vault wraps it, and copied into the key table. Within a batch
    the log interleaves members the way traffic would: registrations, then edits, then scouts.
    `registered_only`: members that only registered (3 events each), nothing else.
    `on_batch`: told each batch's domain events once they are stored (to seed read models).
    """
    started = time.perf_counter()
    keys = _PreparedKeys(accounts.vault)
    mapper = PersonalDataMapper(transcoder=accounts.mapper.transcoder, vault=cast(KeyVault, keys))
    datastore = accounts.database.datastore
    if not isinstance(datastore, PostgresDatastore):
        raise RuntimeError("log generation writes with COPY: PostgreSQL only")
    per_member = REGISTERED_EVENTS if registered_only else EVENTS_PER_ACCOUNT
    wanted_accounts = max(1, events // per_member)
    written = account_events = stored_bytes = made = 0
    account_ids: list[UUID] = []
    now = datetime.now(UTC)
    while made < wanted_accounts:
        size = min(batch_accounts, wanted_accounts - made)
        first: list[Any] = []
        edits: list[Any] = []
        scouts: list[Any] = []
        for index in range(made, made + size):
            account_id, registered, edited, scouted = _member(index, now, registered_only)
            if keep_ids:
                account_ids.append(account_id)
            first.extend(registered)
            edits.extend(edited)
            scouts.extend(scouted)
        domain_events = [*first, *edits, *scouts]
        stored: list[StoredEvent] = [mapper.to_stored_event(e) for e in domain_events]
        account_events += sum(1 for e in domain_events if isinstance(e, Account.Event))
        stored_bytes += sum(len(s.state) for s in stored)
        _copy_in(datastore, accounts, keys.new_rows, stored)
        keys.new_rows.clear()
        keys.keys.clear()
        if on_batch is not None:
            on_batch(domain_events)
        written += len(stored)
        made += size
    with datastore.transaction(commit=True) as cursor:
        cursor.execute(f"ANALYZE {accounts.database.events_table}")
        cursor.execute(f"ANALYZE {accounts.database.table('account_keys')}")
    return GeneratedLog(
        events=written,
        account_events=account_events,
        accounts=made,
        seconds=time.perf_counter() - started,
        stored_bytes=stored_bytes,
        account_ids=account_ids,
    )
