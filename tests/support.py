"""The one home of test helpers: API tokens, contract records, an SMTP sink, service stores,
per-test topics, reading a topic, waiting on a condition, consumer threads, races.

Test modules import from here, never from a conftest: every tier has its own `conftest.py`,
and they all share the module name `conftest`. The fixtures wrapping these helpers live in
the conftests. It sits beside the root conftest, whose folder pytest puts on sys.path.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from aiosmtpd.controller import Controller
from kafka.admin import KafkaAdminClient
from psycopg import sql

from consumers.faults import RetryPolicy, dead_letter_record
from consumers.handler import Handler, PoisonRecord
from consumers.kit import Consumer
from consumers.migrations import SERVICES, kit_component
from consumers.store import ConsumerStore, open_database
from lifecycle.bootstrap import migrate_lifecycle, migrate_service
from lifecycle.kafka.admin import TopicSettings, ensure_topics, read_from_start
from lifecycle.kafka.inprocess import InProcessPublisher
from lifecycle.kafka.inspector import BrokerUnavailableError, DeadLetter, SourceRecord
from lifecycle.kafka.source import Incoming, InProcessSource
from lifecycle.migrator import migrate
from lifecycle.settings import Settings
from lifecycle.storage import Database
from schemas.contract import (
    ContractModel,
    ProfileV1,
    PurgedV1,
    Record,
    ScoutReceivedV1,
    TopicNames,
    WithdrawalRequestedV1,
    encode_record,
    encode_tombstone,
    lifecycle_event_id,
    profile_event_id,
)

T = TypeVar("T")
R = TypeVar("R", bound="Running")

# One known bearer token per role; the `settings` fixture accepts them.
TOKENS = {
    "service": "service-token",
    "scout": "scout-token",
    "ops": "ops-token",
    "auditor": "auditor-token",
}


# The pytest-xdist worker running this process (gw0, gw1, ...); "main" without xdist.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")


def unique_tag() -> str:
    """A name part no other test uses, on this worker or another: schemas, topic prefixes and
    consumer groups are named with it, so parallel workers never share state."""
    return f"{WORKER}_{uuid.uuid4().hex[:10]}"


ROOT = Path(__file__).resolve().parent.parent


def import_contract(contract_id: str) -> dict[str, Any]:
    """One of import-linter's contracts in pyproject.toml, the one source of the import rules."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [found] = [c for c in config["contracts"] if c["id"] == contract_id]
    return dict(found)


def import_layers() -> list[list[str]]:
    """The layers contract, top first: each layer's modules (`a | b` and `a : b` split)."""
    layers: list[str] = import_contract("layers")["layers"]
    return [[name.strip() for name in re.split(r"[|:]", layer)] for layer in layers]


def auth(role: str) -> dict[str, str]:
    """The Authorization header of that role's token."""
    return {"Authorization": f"Bearer {TOKENS[role]}"}


# Records as the relay writes them: (topic, record) pairs ready to publish.

NOTIFY_ALL = {"scouts": True, "recommendations": True, "notices": True}


def lifecycle_record(
    topics: TopicNames, data: ContractModel, account_id: UUID, version: int
) -> tuple[str, Record]:
    record = encode_record(
        data,
        ce_id=lifecycle_event_id(account_id, version),
        subject=str(account_id),
        time=datetime.now(UTC),
    )
    return topics.lifecycle, record


def scout_received(
    topics: TopicNames, account_id: UUID, version: int, scout_id: str | None = None
) -> tuple[str, Record]:
    """A scout from `company-<scout id>`; the scout id defaults to `scout-<version>`."""
    scout_id = scout_id or f"scout-{version}"
    data = ScoutReceivedV1(
        account_id=account_id,
        scout_id=scout_id,
        company_id=f"company-{scout_id}",
        job_id="job-1",
        received_at=datetime.now(UTC),
    )
    return lifecycle_record(topics, data, account_id, version)


def withdrawal(topics: TopicNames, account_id: UUID, version: int) -> tuple[str, Record]:
    data = WithdrawalRequestedV1(
        account_id=account_id,
        reason="hired_elsewhere",
        requested_at=datetime.now(UTC),
        gift_forfeited=False,
    )
    return lifecycle_record(topics, data, account_id, version)


def purged(topics: TopicNames, account_id: UUID, version: int) -> tuple[str, Record]:
    data = PurgedV1(account_id=account_id, purged_at=datetime.now(UTC))
    return lifecycle_record(topics, data, account_id, version)


def profile(
    topics: TopicNames,
    account_id: UUID,
    version: int,
    email: str,
    name: str,
    notifications: dict[str, bool] | None = None,
) -> tuple[str, Record]:
    data = ProfileV1(
        account_id=account_id,
        email=email,
        display_name=name,
        notifications=notifications or NOTIFY_ALL,
    )
    record = encode_record(
        data,
        ce_id=profile_event_id(account_id, version),
        subject=str(account_id),
        time=datetime.now(UTC),
    )
    return topics.profile, record


def profile_tombstone(topics: TopicNames, account_id: UUID, version: int) -> tuple[str, Record]:
    record = encode_tombstone(
        ProfileV1,
        ce_id=profile_event_id(account_id, version),
        subject=str(account_id),
        time=datetime.now(UTC),
    )
    return topics.profile, record


# Sinks, stores, topics


@dataclass
class Received:
    recipients: list[str]
    message: EmailMessage


@dataclass
class SmtpSink:
    """A real SMTP server (aiosmtpd) on loopback that keeps every message it accepts."""

    host: str = "127.0.0.1"
    port: int = 0
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.lock:
            self.received.append(Received(list(envelope.rcpt_tos), parsed))
        return "250 OK"

    def messages(self) -> list[Received]:
        with self.lock:
            return list(self.received)


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768 and up), so no outgoing connection
    in TIME-WAIT can hold it when the server binds it."""
    for _ in range(200):
        port = random.randint(20000, 32767)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 32768")


@contextmanager
def smtp_sink(*, smtputf8: bool = True) -> Iterator[SmtpSink]:
    sink = SmtpSink(port=free_port())
    # SMTPUTF8 as a production relay offers it: an internationalised address (RFC 6532).
    controller = Controller(sink, hostname=sink.host, port=sink.port, enable_SMTPUTF8=smtputf8)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


StoreFactory = Callable[[str], Database]


def migrated_store(database: Database, name: str) -> Database:
    """A consumer's store with the kit's tables, and the service's own when `name` is one."""
    migrate(database, [kit_component(), *([SERVICES[name]] if name in SERVICES else [])])
    return database


def migrate_embedded(settings: Settings) -> None:
    """What `lifecycle migrate` does with Kafka off: the lifecycle database and the three
    services' stores beside it."""
    migrate_lifecycle(settings)
    for name in SERVICES:
        migrate_service(settings, name)


@contextmanager
def service_schemas_beside(settings: Settings) -> Iterator[Settings]:
    """The three services' stores in schemas beside the lifecycle schema (`<schema>_<name>`),
    migrated as `lifecycle migrate --service NAME` would (the lifecycle schema itself is the
    caller's); dropped afterwards."""
    assert settings.database_schema is not None
    for name in SERVICES:
        migrate_service(settings, name, f"{settings.database_schema}_{name}")
    try:
        yield settings
    finally:
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            for name in SERVICES:
                conn.execute(f"DROP SCHEMA IF EXISTS {settings.database_schema}_{name} CASCADE")


@contextmanager
def service_stores(backend: str, tmp_path: Path, postgres_url: str) -> Iterator[StoreFactory]:
    """`make("scout")`: that service's own store, a fresh schema or SQLite file, dropped after."""
    opened: list[Database] = []
    schemas: list[str] = []
    tag = unique_tag()

    def make(name: str) -> Database:
        if backend == "postgres":
            schema = f"t_{tag}_{name}"
            schemas.append(schema)
            database = open_database(postgres_url, schema)
        else:
            database = open_database(f"sqlite:///{tmp_path / f'{name}.sqlite3'}", name)
        opened.append(database)
        return migrated_store(database, name)

    try:
        yield make
    finally:
        for database in opened:
            database.close()
        if schemas:
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                for schema in schemas:
                    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# Migrated lifecycle schemas, reused by the tests of one worker

# A schema's shape: every relation, column, constraint, index, trigger and function in it, and
# the migrations it records, with the schema's own name taken out (index and trigger definitions
# and function bodies name it): a worker's schemas of the same shape compare equal whatever
# their names. A test that leaves the shape changed gets its schema dropped.
_SHAPE = """
SELECT md5(coalesce(string_agg(named, ',' ORDER BY named), '')) FROM (
 SELECT replace(item, %(name)s, '') AS named FROM (
  SELECT 'rel ' || c.relname || ' ' || c.relkind::text FROM pg_class c
   WHERE c.relnamespace = %(oid)s
  UNION ALL
  SELECT 'col ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
         || ' ' || a.attnotnull || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
   WHERE c.relnamespace = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT 'con ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
   WHERE connamespace = %(oid)s
  UNION ALL
  SELECT 'idx ' || pg_get_indexdef(i.indexrelid) FROM pg_index i
    JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = %(oid)s
  UNION ALL
  SELECT 'trg ' || pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text FROM pg_trigger t
    JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = %(oid)s AND NOT t.tgisinternal
  UNION ALL
  SELECT 'fn ' || p.proname || ' ' || md5(replace(p.prosrc, %(name)s, ''))
    FROM pg_proc p WHERE p.pronamespace = %(oid)s
) shape(item)
) unnamed
"""


class MigratedSchemas:
    """PostgreSQL schemas with the lifecycle database migrated, for the tests of one worker.

    Migrating a schema runs every migration in a transaction of its own (about fifty turns
    and as many catalog writes); a test is handed a schema another test of this worker used
    before, emptied instead: every row deleted (triggers off, as a restore would), every
    sequence restarted, and the schemas named after it (`<schema>_scout`, ...) dropped. It is
    then as a fresh one would be; a schema whose shape the test changed (DDL, a migration
    rolled back) is dropped and a new one migrated. Migration tests take `pg_schema`, always
    new and empty."""

    def __init__(self, postgres_url: str) -> None:
        self.postgres_url = postgres_url
        self.free: list[str] = []
        self.shape: str | None = None  # the shape of a schema just migrated
        self.seeded: dict[str, str] = {}  # the rows migrations write (JSON), by table
        # One session for the whole run: a new one would load the catalog entries of every
        # table again to empty them (most of the cost of a reset).
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.postgres_url, autocommit=True)
        return self._conn

    def take(self) -> str:
        if self.free:
            return self.free.pop()
        from lifecycle.crypto import new_master_key  # no key is stored by a migration

        schema = f"t_{unique_tag()}"
        conn = self._connection()
        conn.execute(f"CREATE SCHEMA {schema}")
        settings = Settings(
            database_url=self.postgres_url,
            database_schema=schema,
            kafka_bootstrap=None,
            master_key=new_master_key(),
        )
        migrate_lifecycle(settings)
        if self.shape is None:
            self.shape = _shape(conn, schema)
            for table in _tables(conn, schema):
                row = conn.execute(f"SELECT json_agg(t) FROM {schema}.{table} t").fetchone()
                if row and row[0] is not None:
                    self.seeded[table] = json.dumps(row[0])
        return schema

    def give_back(self, schema: str) -> None:
        """Empty `schema` for the next test, or drop it when the test changed its shape."""
        conn = self._connection()
        conn.execute("SET lock_timeout = '30s'")  # a lock a test left held fails here
        companions = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)",
            (f"{schema}_",),
        ).fetchall()
        for (companion,) in companions:
            conn.execute(f"DROP SCHEMA {companion} CASCADE")
        if _shape(conn, schema) != self.shape:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
            return
        sequences = conn.execute(
            "SELECT sequencename::text FROM pg_sequences WHERE schemaname = %s", (schema,)
        ).fetchall()
        # One turn: every row deleted with the triggers off (as a restore would), the rows
        # migrations wrote (read models' positions at 0) written again, every sequence (the
        # notification ids) restarted.
        conn.execute(
            "BEGIN; SET LOCAL session_replication_role = replica; "
            + "".join(f"DELETE FROM {schema}.{table}; " for table in _tables(conn, schema))
            + "".join(
                f"INSERT INTO {schema}.{table} SELECT * FROM json_populate_recordset("
                f"NULL::{schema}.{table}, {sql.Literal(rows).as_string(conn)}); "
                for table, rows in self.seeded.items()
            )
            + "".join(f"ALTER SEQUENCE {schema}.{seq} RESTART; " for (seq,) in sequences)
            + "COMMIT"
        )
        self.free.append(schema)

    def close(self) -> None:
        conn = self._connection()
        for schema in self.free:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        self.free.clear()
        conn.close()


def _tables(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    """The tables of `schema` but the record of its migrations."""
    rows = conn.execute(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = %s"
        " AND tablename <> 'schema_migrations' ORDER BY 1",
        (schema,),
    ).fetchall()
    return [table for (table,) in rows]


def _shape(conn: psycopg.Connection[Any], schema: str) -> str:
    """`schema`'s shape as one digest, and the migrations it records ("gone": no schema)."""
    row = conn.execute("SELECT oid FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    if row is None:
        return "gone"
    found = conn.execute(_SHAPE, {"oid": row[0], "name": schema}).fetchone()
    recorded = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.schema_migrations",)
    ).fetchone()
    migrations = (
        conn.execute(
            "SELECT string_agg(component || ' ' || version || ' ' || needs_code, ',' "
            f"ORDER BY component, version) FROM {schema}.schema_migrations"
        ).fetchone()
        if recorded and recorded[0]
        else None
    )
    return f"{found[0] if found else ''} {migrations[0] if migrations else ''}"


@contextmanager
def unique_topics(bootstrap: str, settings: TopicSettings | None = None) -> Iterator[TopicNames]:
    """Topics of one test alone on the shared broker (consumer groups take the same prefix)."""
    names = TopicNames(prefix=f"t{unique_tag()}.")
    ensure_topics(bootstrap, names, settings)
    try:
        yield names
    finally:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.delete_topics(list(names.all()))
        finally:
            admin.close()


def dump_database(postgres_url: str, schema: str) -> bytes:
    """The rows pg_dump finds of one test: its schema and its services' (`<schema>_scout`, ...),
    and `public`, where a table made without a schema would land. Not the whole database:
    other tests' schemas come and go meanwhile (parallel workers), and pg_dump fails on a
    table dropped under it."""
    return subprocess.run(
        ["pg_dump", "--data-only", f"--schema={schema}*", "--schema=public", postgres_url],
        capture_output=True,
        check=True,
    ).stdout


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[Any]:
    """Every record from offset 0 to the end offsets as the broker reports them now."""
    return read_topics(bootstrap, [topic], timeout_s)


def read_topics(bootstrap: str, topics: Iterable[str], timeout_s: float = 30.0) -> list[Any]:
    """`read_topic` for several topics with one client (a client costs about 150 ms)."""
    records = read_from_start(bootstrap, topics, timeout_s=timeout_s)
    return sorted(records, key=lambda record: (record.topic, record.partition, record.offset))


def wait_until(condition: Callable[[], bool], what: str = "", timeout_s: float = 60.0) -> None:
    """Check `condition` until it holds, failing at the deadline. Between checks it pauses
    50 ms, or twice as long as the check took (a second at most): a check that opens a Kafka
    client or reads a topic costs 100-300 ms of CPU, and checked back to back it held a core
    for the whole wait on a two-core machine."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while True:
        began = time.monotonic()
        if condition():
            return
        took = time.monotonic() - began
        assert time.monotonic() < deadline, f"not met before the deadline: {what or condition}"
        pause.wait(min(1.0, max(0.05, 2 * took)))


class Running:
    """A consumer (or anything with `run(stop)`) on a thread of its own; `stop()` joins it
    and `error` is what ended it when it crashed."""

    def __init__(self, runnable: Any) -> None:
        self.runnable = runnable
        self.consumer = getattr(runnable, "consumer", runnable)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._target)
        self.thread.start()

    def _target(self) -> None:
        try:
            self.runnable.run(self.stop_event)
        except BaseException as error:
            self.error = error

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


@contextmanager
def running_consumers() -> Iterator[list[Running]]:
    """Everything appended is stopped at the end."""
    started: list[Running] = []
    try:
        yield started
    finally:
        for item in started:
            item.stop()


def started(running: list[Running], item: R) -> R:
    """`item`, appended to `running` (the fixture's list, stopped when the test ends)."""
    running.append(item)
    return item


class InProcessService(Running):
    """One service's consumer on a thread of its own over an in-process log: `send` records,
    then wait until `settled`."""

    def __init__(
        self,
        name: str,
        database: Database,
        handler: Handler,
        topics: list[str],
        *,
        retry: RetryPolicy,
    ) -> None:
        self.name = name
        self.log = InProcessPublisher()
        self.database = database
        self.sent = 0
        super().__init__(
            Consumer(
                name,
                InProcessSource(self.log, topics),
                ConsumerStore(database),
                handler,
                self.log,
                dlq_topic=TopicNames().dlq(name),
                retry=retry,
                poll_timeout_s=0.05,
            )
        )

    def send(self, *items: tuple[str, Record]) -> None:
        for topic, record in items:
            self.log.publish(topic, record.key, record.headers, record.value)
        self.log.flush()
        self.sent += len(items)

    def settled(self) -> bool:
        """Every record sent is handled and what it sends is published: the kit counts a
        record applied at its commit, before it publishes the outbox."""
        stats = self.consumer.stats
        handled = stats.applied + stats.duplicates + stats.dead_lettered >= self.sent
        return handled and not self.consumer.store.pending_outgoing(limit=1)


RACE_DEADLINE_S = 60.0  # seconds any one race may take, far above what it needs


def race(work: Callable[[int], T], n: int = 8) -> list[T | BaseException]:
    """Run work(0..n-1) in n threads released together; each slot holds a result or an error."""
    barrier = threading.Barrier(n, timeout=RACE_DEADLINE_S)
    pending = object()
    results: list[Any] = [pending] * n

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as error:
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=RACE_DEADLINE_S)
    assert not any(thread.is_alive() for thread in threads), "a racer missed the deadline"
    assert pending not in results
    return results


# Each would be more (or other) than one recipient once folded, or is no mailbox at all.
HOSTILE_ADDRESSES = [
    "attacker＠evil.example，victim@example.jp",  # noqa: RUF001 - full-width on purpose
    "attacker@evil.example，victim@example.jp",  # noqa: RUF001
    "attacker@evil.example；victim@example.jp",  # noqa: RUF001
    "a@x.jp,b@y.jp",
    "a@x.jp;b@y.jp",
    "a@x.jp, b@y.jp",
    "Victim <victim@example.jp>",
    "＜victim@example.jp＞",  # noqa: RUF001
    "<victim@example.jp>",
    '"a,b"@example.jp',
    "＂a＂@example.jp",  # noqa: RUF001
    "a(comment)@example.jp",
    "@route.example:victim@example.jp",
    "victim@[127.0.0.1]",
    "a\\@b@example.jp",
    "a@b@example.jp",
    "victim@example.jp\r\nBcc: attacker@evil.example",
    "victim@example.jp\nbcc:attacker@evil.example",
    "victim@example.jp\u200b",
    "victim@exam\u202eple.jp",
    "a..b@example.jp",
    ".a@example.jp",
    "a.@example.jp",
    "a@-example.jp",
    "a@example-.jp",
    "a@exa_mple.jp",
    "a@localhost",
    "",
    "x" * 65 + "@example.jp",
    "a@" + "b" * 250 + ".jp",
]


def searched_forms(value: str) -> list[bytes]:
    """The value as the project could store it: UTF-8, JSON-escaped, bytea hex, base64."""
    raw = value.encode()
    return [
        raw,
        value.casefold().encode(),
        json.dumps(value).strip('"').encode(),
        raw.hex().encode(),
        base64.b64encode(raw),
    ]


def files_holding(
    directory: Path, needles: list[bytes], written_since: float | None = None
) -> list[str]:
    """Every file under `directory` that holds any of `needles` in any byte (a file gone
    while walking is skipped), named relative to it. With `written_since` (a Unix time) only
    the files written since are read: a value first made after it can be in no other (a
    PostgreSQL cluster's files are about a gigabyte by the end of a run, mostly untouched)."""
    found = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        try:
            if written_since is not None and path.stat().st_mtime < written_since:
                continue
            content = path.read_bytes()
        except (FileNotFoundError, PermissionError):
            continue
        if any(needle in content for needle in needles):
            found.append(str(path.relative_to(directory)))
    return found


# What ops read: the alert rules' and the dashboard's PromQL, and the metric names it uses.

OPS = Path(__file__).resolve().parent.parent / "ops"
ALERT_RULES = OPS / "prometheus" / "alerts.yml"
DASHBOARD = OPS / "grafana" / "lifecycle.json"
_PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "bool", "offset"}


def ops_expressions() -> list[str]:
    """Every PromQL expression of the alert rules (alerts and recordings) and the dashboard."""
    import json

    import yaml

    rules = yaml.safe_load(ALERT_RULES.read_text())
    found = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        found += [target["expr"] for target in panel.get("targets", [])]
    return found


def recorded_names() -> set[str]:
    import yaml

    rules = yaml.safe_load(ALERT_RULES.read_text())
    return {
        rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule
    }


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers that are not functions, keywords,
    label names (inside braces or a `by (...)` / `on (...)` list) or numbers."""
    import re

    text = re.sub(r'"[^"]*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        follows = text[match.end() :].lstrip()[:1]
        word = match.group(0)
        if follows != "(" and word not in _PROMQL_WORDS and not word.startswith("__"):
            names.add(word)
    return names


# An in-memory Kafka for the service tier


@dataclass
class FakeKafka:
    """Topics as lists of records; a record's offset is its index. `failing` makes the next
    publish fail as a broker outage would."""

    topics: TopicNames = field(default_factory=TopicNames)
    configured: bool = True
    log: dict[str, list[SourceRecord]] = field(default_factory=dict)
    superseded_offsets: set[tuple[str, int]] = field(default_factory=set)
    failing: bool = False

    def check(self) -> None:
        return None

    def group_lag(self) -> list[dict[str, Any]]:
        return []

    def append(self, topic: str, record: Record) -> SourceRecord:
        held = self.log.setdefault(topic, [])
        stored = SourceRecord(topic, 0, len(held), record.key, list(record.headers), record.value)
        held.append(stored)
        return stored

    def dead_letter_of(
        self, group: str, source: SourceRecord, *, offset: int | None = None
    ) -> DeadLetter:
        """What the kit writes when `group` cannot handle `source` (offset: pretend another)."""
        incoming = Incoming(
            source.topic,
            source.partition,
            source.offset if offset is None else offset,
            source.key,
            list(source.headers),
            source.value,
        )
        letter = dead_letter_record(incoming, PoisonRecord("bad"), "bad", 1, group)
        stored = self.append(self.topics.dlq(group), letter)
        return self.dead_letter(group, 0, stored.offset)  # type: ignore[return-value]

    def dead_letters(self, group: str, limit: int, skip: set[tuple[int, int]]) -> list[DeadLetter]:
        held = self.log.get(self.topics.dlq(group), [])
        letters = [self.dead_letter(group, r.partition, r.offset) for r in held]
        return [d for d in letters if d and (d.partition, d.offset) not in skip][:limit]

    def dead_letter(self, group: str, partition: int, offset: int) -> DeadLetter | None:
        held = self.log.get(self.topics.dlq(group), [])
        if partition != 0 or not 0 <= offset < len(held):
            return None
        record = held[offset]
        return DeadLetter(
            group,
            record.topic,
            0,
            offset,
            None,
            record.key,
            record.headers,
            len(record.value or b""),
        )

    def source_record(self, topic: str, partition: int, offset: int) -> SourceRecord | None:
        held = self.log.get(topic, [])
        return held[offset] if partition == 0 and 0 <= offset < len(held) else None

    def superseded(self, record: SourceRecord) -> bool:
        return (record.topic, record.offset) in self.superseded_offsets

    def publish(self, topic: str, key: bytes, headers: list[tuple[str, bytes]], value: Any) -> None:
        if self.failing:
            raise BrokerUnavailableError("Kafka refused the record (test)")
        self.append(topic, Record(key, list(headers), value))


@contextmanager
def worker_threads(settings: Settings, topics: TopicNames, *workers: str) -> Iterator[None]:
    """The named workers (`relay`, `erasure`, `data-exports`) and the three reference services,
    each on a thread as its CLI command runs it (every service in a schema of its own); on exit
    each is stopped, and none may have failed."""
    from lifecycle import workers as run  # the entrypoints, only for the tests that start them

    stop = threading.Event()
    lead = {
        "relay": run.run_relay,
        "erasure": run.run_erasure,
        "data-exports": run.run_data_exports,
    }
    targets: list[Callable[[], None]] = [
        lambda worker=worker: lead[worker](settings, stop, topics=topics) for worker in workers
    ]
    targets += [
        lambda name=name: run.run_consumer(
            name, settings, stop, topics=topics, schema=f"{settings.database_schema}_{name}"
        )
        for name in ("scout", "chat", "mail")
    ]
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert [getattr(error, "detail", repr(error)) for error in errors] == []


def racing_scripts(script: str, messages: Sequence[Any], timeout_s: float = 240) -> list[Any]:
    """Runs `script` (Python source) in one process per message, each sent its message as a
    JSON line and answering "ready"; then tells them all "go" at once, so they race, and
    returns each one's last output line, parsed as JSON, in order."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        for _ in messages
    ]
    try:
        for process, message in zip(processes, messages, strict=True):
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(json.dumps(message) + "\n")
            process.stdin.flush()
            assert process.stdout.readline().strip() == "ready"
        for process in processes:  # all start together
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = []
        for process in processes:
            out, _ = process.communicate(timeout=timeout_s)
            assert process.returncode == 0
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
