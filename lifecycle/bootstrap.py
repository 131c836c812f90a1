"""Builders: the service's parts made from Settings, so entrypoints only start or serve them.

Here: the application (`build_accounts`, which checks the schema version first), the
migrations of each database (`migrate_lifecycle`, `migrate_service`), the erasure process
(`build_erasure`), the reference services' stores and handlers, and the consumers that
run the services and the erasure process, over Kafka or over the in-process log. Nothing heavy
happens at import.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from consumers import chat, mail, scout
from consumers.faults import RetryPolicy
from consumers.handler import Handler
from consumers.kit import MARK_RETENTION, Consumer, Hooks
from consumers.mailer import DiscardingMailer, Mailer, SmtpMailer
from consumers.migrations import kit_component, service_components
from consumers.store import ConsumerStore, open_database
from consumers.withdrawal_mail import SuppressionLane
from lifecycle.application import Accounts
from lifecycle.audit.receipt import Receipts
from lifecycle.crypto import decode_master_key
from lifecycle.data_export.intake import PartIntake
from lifecycle.data_export.service import DataExports
from lifecycle.erasure.intake import ConfirmationIntake
from lifecycle.erasure.process import ErasureProcess
from lifecycle.erasure.queries import ErasureStatusQuery
from lifecycle.erasure.receipt_lane import ReceiptLane
from lifecycle.errors import LifecycleError, MasterKeyError, StartupError
from lifecycle.kafka.inprocess import InProcessPublisher
from lifecycle.kafka.producer import KafkaPublisher, Publisher
from lifecycle.kafka.source import InProcessSource, KafkaSource, Source
from lifecycle.keyring import FileKeyring, Keyring, KeyringError, MasterKeyring, derive
from lifecycle.logs import get_logger
from lifecycle.migrations import DATA_EXPORT, LIFECYCLE
from lifecycle.migrator import Applied, Component, SchemaVersionError, check, migrate
from lifecycle.services.erasure_evidence import Broker, ErasureEvidence
from lifecycle.settings import Settings
from lifecycle.storage import Database, schema_setup_turn
from projections.migrations import READ_MODEL_MIGRATIONS
from schemas.contract import ERASING_SERVICES, ERASURE_GROUP, SUPPRESSION_GROUP, TopicNames
from schemas.data_export import EXPORT_GROUP

# The erasure consumer keeps its marks in the lifecycle database, beside the event store.
ERASURE_TABLE_PREFIX = "erasure_"
# The data-export intake keeps its marks there too.
EXPORT_TABLE_PREFIX = "data_export_"

log = get_logger(__name__)


# The application and the erasure process


def build_accounts(settings: Settings) -> Accounts:
    """The application, once its database's schema is one this release works with."""
    try:
        env = settings.application_env()  # configuration errors first, before any connection
        accounts = Accounts(env=env)
    except LifecycleError as error:
        raise StartupError(detail=f"{error.code}: {error.detail}") from None
    except Exception as error:
        raise _database_unusable(error) from None
    try:
        check(accounts.database, lifecycle_components())
    except SchemaVersionError as error:
        accounts.close()
        raise StartupError(detail=str(error)) from None
    except Exception as error:
        accounts.close()
        raise _database_unusable(error) from None
    return accounts


# Migrations: what `lifecycle migrate` applies and every process checks at start.


def lifecycle_components() -> list[Component]:
    """The lifecycle database: the service's tables, the erasure consumer's kit tables and
    the read models, each versioned on its own."""
    return [
        LIFECYCLE,
        kit_component(ERASURE_TABLE_PREFIX),
        READ_MODEL_MIGRATIONS,
        DATA_EXPORT,
        kit_component(EXPORT_TABLE_PREFIX),
    ]


def migrate_lifecycle(
    settings: Settings, on_applied: Callable[[Applied], None] | None = None
) -> list[Applied]:
    """Apply what the lifecycle database lacks (idempotent). On PostgreSQL it takes its turn
    with every process of the previous release starting up (the same session lock)."""
    database = _lifecycle_database(settings)
    try:
        with schema_setup_turn(settings.database_url, settings.database_schema):
            return migrate(database, lifecycle_components(), on_applied)
    finally:
        database.close()


def migrate_service(
    settings: Settings,
    name: str,
    schema: str | None = None,
    on_applied: Callable[[Applied], None] | None = None,
) -> list[Applied]:
    """Apply what a reference service's store lacks: the kit's tables and its own."""
    _check_service(name)
    database = service_database(settings, name, schema)
    try:
        return migrate(database, service_components(name), on_applied)
    finally:
        database.close()


def check_service_store(database: Database, name: str) -> None:
    try:
        check(database, service_components(name), where=f"{name} store")
    except SchemaVersionError as error:
        raise StartupError(detail=str(error)) from None


def _lifecycle_database(settings: Settings) -> Database:
    if settings.is_embedded:
        Path(settings.database_url.removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )
    return Database.open(
        settings.database_url, settings.database_schema, application_name=Accounts.name
    )


def _database_unusable(error: Exception) -> StartupError:
    """Name the kind of failure without echoing credentials from the URL."""
    text = str(error).strip().splitlines()
    first_line = text[0] if text else type(error).__name__
    return StartupError(detail=f"database unusable ({type(error).__name__}): {first_line}")


def build_erasure(accounts: Accounts, settings: Settings) -> ErasureProcess:
    """The erasure process as configured (its deadline from settings), with its signed
    receipts (their tables come from migrations)."""
    process = ErasureProcess(accounts)
    receipts = Receipts(process, topics=settings.topics, key_policy=settings.key_policy)
    process.receipts = receipts
    return process


def erasure_status_query(accounts: Accounts, settings: Settings) -> ErasureStatusQuery:
    """One account's erasure status from the event store, against the configured deadline."""
    return ErasureStatusQuery(accounts, timedelta(hours=settings.erasure_deadline_hours))


def build_data_exports(accounts: Accounts, settings: Settings) -> DataExports:
    """The data exports as configured (their tables come from migrations)."""
    return DataExports(
        accounts,
        expiry=timedelta(days=settings.data_export_expiry_days),
        deadline=timedelta(days=settings.data_export_deadline_days),
    )


def data_export_consumer(
    exports: DataExports,
    source: Source,
    publisher: Publisher,
    topics: TopicNames,
    *,
    retry: RetryPolicy | None = None,
    hooks: Hooks | None = None,
    poll_timeout_s: float = 0.5,
    lag_interval_s: float = 1.0,
) -> Consumer:
    """The data-export intake behind the consumer kit: parts from `source` (which reads
    every service's part topic, `topics.inputs_of(EXPORT_GROUP)`)."""
    return Consumer(
        EXPORT_GROUP,
        source,
        ConsumerStore(exports.database, table_prefix=EXPORT_TABLE_PREFIX),
        PartIntake(exports, topics),
        publisher,
        dlq_topic=topics.dlq(EXPORT_GROUP),
        retry=retry,
        hooks=hooks,
        poll_timeout_s=poll_timeout_s,
        lag_interval_s=lag_interval_s,
    )


def kafka_data_export_consumer(
    settings: Settings,
    accounts: Accounts,
    *,
    topics: TopicNames | None = None,
    retry: RetryPolicy | None = None,
) -> ConsumerRun:
    """The data-export intake reading parts from Kafka (the caller owns `accounts`)."""
    bootstrap = require_kafka(settings, "data-exports")
    topics = topics or settings.topics
    group = topics.group_id(EXPORT_GROUP)
    security = settings.kafka_security
    publisher = KafkaPublisher(bootstrap, client_id=f"{group}-dlq", security=security)
    try:
        source = KafkaSource(
            bootstrap,
            list(topics.inputs_of(EXPORT_GROUP)),
            group,
            group_instance_id=settings.instance_id,
            security=security,
        )
    except BaseException:
        publisher.close()
        raise
    consumer = data_export_consumer(
        build_data_exports(accounts, settings),
        source,
        publisher,
        topics,
        retry=retry,
        lag_interval_s=KAFKA_LAG_INTERVAL_S,
    )
    return ConsumerRun(consumer, [publisher.close])


def receipts_of(process: ErasureProcess) -> Receipts:
    """The receipts a built erasure process issues (see `build_erasure`)."""
    assert isinstance(process.receipts, Receipts), "built by build_erasure"
    return process.receipts


def erasure_evidence(
    accounts: Accounts, settings: Settings, erasure: ErasureProcess | None = None
) -> ErasureEvidence:
    """Re-shred, receipts and erasure proofs over the configured stores and broker (the
    receipts of `erasure`, when given: the process the API already built)."""
    return ErasureEvidence(
        accounts,
        receipts_of(erasure or build_erasure(accounts, settings)),
        erasure_status_query(accounts, settings),
        lambda name, schema: existing_service_database(settings, name, schema),
        Broker(settings.topics, settings.kafka_bootstrap, settings.kafka_security),
    )


# The reference services' parts


def service_database(settings: Settings, name: str, schema: str | None = None) -> Database:
    """A service's own store: schema `name` on the PostgreSQL server, or `<name>.sqlite3`
    beside the embedded lifecycle database."""
    if settings.is_embedded:
        return open_database(f"sqlite:///{_service_file(settings, name)}", name)
    return open_database(settings.database_url, schema or name)


def existing_service_database(
    settings: Settings, name: str, schema: str | None = None
) -> Database | None:
    """A service's own store when it exists; looking creates none."""
    if settings.is_embedded and not _service_file(settings, name).exists():
        return None
    database = service_database(settings, name, schema)
    if database.schema_exists():
        return database
    database.close()
    return None


def _service_file(settings: Settings, name: str) -> Path:
    return Path(settings.database_url.removeprefix("sqlite:///")).parent / f"{name}.sqlite3"


def service_keyring(settings: Settings, name: str) -> Keyring:
    """A reference service's own keyring for its sealed store (consumers.sealed): its own
    directory `service-<name>` inside the keyring directory, or, where only the master key is
    configured, a master of its own derived from it (never the lifecycle service's KEKs)."""
    master_key, directory = settings.resolved_keys()
    try:
        if directory is not None:
            return FileKeyring(directory / f"service-{name}")
    except KeyringError as error:
        raise MasterKeyError(detail=str(error)) from None
    assert master_key is not None, "resolved_keys gives one or the other"
    return MasterKeyring(derive(decode_master_key(master_key), f"lifecycle/service/{name}"))


def service_handler(
    name: str,
    database: Database,
    topics: TopicNames,
    mailer: Mailer | None = None,
    *,
    keyring: Keyring,
) -> tuple[Handler, list[str]]:
    """The handler of one reference service and the topics it reads."""
    if name == "scout":
        return scout.ScoutHandler(database, topics), scout.subscribed_topics(topics)
    if name == "chat":
        return chat.ChatHandler(database, topics, keyring=keyring), chat.subscribed_topics(topics)
    if name == "mail":
        handler = mail.MailHandler(database, topics, mailer or DiscardingMailer(), keyring=keyring)
        return handler, mail.subscribed_topics(topics)
    _check_service(name)
    raise AssertionError(name)


def _check_service(name: str) -> None:
    if name not in ERASING_SERVICES:
        raise StartupError(
            detail=f"unknown consumer {name!r}: expected one of {', '.join(ERASING_SERVICES)}"
        )


def mailer_for(settings: Settings) -> Mailer:
    if settings.smtp_host:
        return SmtpMailer(settings.smtp_host, settings.smtp_port)
    return DiscardingMailer()


def _service_consumer(
    name: str,
    settings: Settings,
    database: Database,
    *,
    topics: TopicNames,
    publisher: Publisher,
    source_of: Callable[[list[str]], Source],
    mailer: Mailer | None,
    retry: RetryPolicy | None,
    hooks: Hooks | None = None,
    poll_timeout_s: float = 0.5,
    lag_interval_s: float = 1.0,
) -> Consumer:
    handler, subscribed = service_handler(
        name,
        database,
        topics,
        mailer or mailer_for(settings),
        keyring=service_keyring(settings, name),
    )
    return Consumer(
        name,
        source_of(subscribed),
        ConsumerStore(database),
        handler,
        publisher,
        dlq_topic=topics.dlq(name),
        retry=retry,
        hooks=hooks,
        poll_timeout_s=poll_timeout_s,
        lag_interval_s=lag_interval_s,
        mark_retention=timedelta(days=settings.consumer_mark_retention_days),
    )


def erasure_consumer(
    process: ErasureProcess,
    source: Source,
    publisher: Publisher,
    topics: TopicNames,
    *,
    retry: RetryPolicy | None = None,
    hooks: Hooks | None = None,
    poll_timeout_s: float = 0.5,
    lag_interval_s: float = 1.0,
    legacy: bool = False,
    mark_retention: timedelta = MARK_RETENTION,
) -> Consumer:
    """The erasure process behind the consumer kit: confirmations from `source` (which reads
    `confirmation_topics`); `legacy` also believes the shared topic of earlier releases."""
    return Consumer(
        ERASURE_GROUP,
        source,
        ConsumerStore(process.database, table_prefix=ERASURE_TABLE_PREFIX),
        ConfirmationIntake(process, topics, legacy=legacy),
        publisher,
        dlq_topic=topics.dlq(ERASURE_GROUP),
        retry=retry,
        hooks=hooks,
        poll_timeout_s=poll_timeout_s,
        lag_interval_s=lag_interval_s,
        mark_retention=mark_retention,
    )


# Kafka configured: one consumer per process

# A Kafka member's lag costs a round trip to the broker per partition, between two polls: asked
# every few seconds, not every second, so records arriving meanwhile wait less.
KAFKA_LAG_INTERVAL_S = 5.0


class Lane(Protocol):
    """Work on a thread beside a consumer: the mail suppression lane, the erasure receipts."""

    name: str

    @property
    def waiting_for(self) -> str | None:
        """The dependency it waits out now (readiness reads it), or None."""
        ...

    def run(self, stop: threading.Event) -> None: ...


@dataclass
class ConsumerRun:
    """A built consumer, the lanes that run beside it on threads of their own (the mail
    service's suppression lane), and what to close after its run."""

    consumer: Consumer
    closers: list[Callable[[], None]] = field(default_factory=list)
    lanes: list[Lane] = field(default_factory=list)

    def workers(self) -> list[Consumer | Lane]:
        """What a probe watches: the consumer and each lane (a lane waiting out a dependency
        makes the process not ready, as the consumer does)."""
        return [self.consumer, *self.lanes]

    def run(self, stop: threading.Event) -> None:
        """The consumer in this thread, each lane in its own; the lanes stop with it."""
        lanes_stop = threading.Event()
        threads = [
            threading.Thread(target=lane.run, args=(lanes_stop,), name=lane.name)
            for lane in self.lanes
        ]
        for thread in threads:
            thread.start()
        try:
            self.consumer.run(stop)
        finally:
            lanes_stop.set()
            for thread in threads:
                thread.join(timeout=30)
            self.close()

    def close(self) -> None:
        closers, self.closers = self.closers, []
        _close_all(closers)


def _close_all(closers: list[Callable[[], None]]) -> None:
    for close in reversed(closers):
        try:
            close()
        except Exception as error:
            log.warning("workers.close_failed", error=type(error).__name__)


def kafka_consumer(
    name: str,
    settings: Settings,
    *,
    topics: TopicNames | None = None,
    schema: str | None = None,
    mailer: Mailer | None = None,
    retry: RetryPolicy | None = None,
    hooks: Hooks | None = None,
) -> ConsumerRun:
    """One reference service (`scout`, `chat`, `mail`) reading Kafka, in its own store."""
    bootstrap = require_kafka(settings, f"consume {name}")
    _check_service(name)
    topics = topics or settings.topics
    group = topics.group_id(name)
    database = service_database(settings, name, schema)
    closers: list[Callable[[], None]] = [database.close]
    try:
        check_service_store(database, name)
        security = settings.kafka_security
        publisher = KafkaPublisher(bootstrap, client_id=f"{group}-outbox", security=security)
        closers.append(publisher.close)
        consumer = _service_consumer(
            name,
            settings,
            database,
            topics=topics,
            publisher=publisher,
            source_of=lambda subscribed: KafkaSource(
                bootstrap,
                subscribed,
                group,
                group_instance_id=settings.instance_id,
                security=security,
            ),
            mailer=mailer,
            retry=retry,
            hooks=hooks,
            lag_interval_s=KAFKA_LAG_INTERVAL_S,
        )
        lanes: list[Lane] = []
        if isinstance(consumer.handler, mail.MailHandler):
            lanes.append(
                SuppressionLane(
                    consumer.handler.withdrawal_mail,
                    KafkaSource(
                        bootstrap,
                        [topics.lifecycle],
                        topics.group_id(SUPPRESSION_GROUP),
                        group_instance_id=settings.instance_id,
                        security=security,
                    ),
                    retry=retry,
                )
            )
    except BaseException:
        _close_all(closers)
        raise
    return ConsumerRun(consumer, closers, lanes)


def kafka_erasure_consumer(
    settings: Settings,
    accounts: Accounts,
    *,
    topics: TopicNames | None = None,
    retry: RetryPolicy | None = None,
    hooks: Hooks | None = None,
) -> ConsumerRun:
    """The erasure process reading confirmations from Kafka (the caller owns `accounts`)."""
    bootstrap = require_kafka(settings, "erasure")
    topics = topics or settings.topics
    process = build_erasure(accounts, settings)
    # Receipts are issued beside the consumer, not before its next poll (see the lane).
    receipts = receipts_of(process)
    lane = ReceiptLane(receipts, receipts.owed, retry=retry)
    process.receipts = lane
    group = topics.group_id(ERASURE_GROUP)
    security = settings.kafka_security
    publisher = KafkaPublisher(bootstrap, client_id=f"{group}-dlq", security=security)
    try:
        source = KafkaSource(
            bootstrap,
            confirmation_topics(settings, topics),
            group,
            group_instance_id=settings.instance_id,
            security=security,
        )
    except BaseException:
        publisher.close()
        raise
    consumer = erasure_consumer(
        process,
        source,
        publisher,
        topics,
        retry=retry,
        hooks=hooks,
        lag_interval_s=KAFKA_LAG_INTERVAL_S,
        legacy=settings.erasure_legacy_confirmations,
        mark_retention=timedelta(days=settings.consumer_mark_retention_days),
    )
    return ConsumerRun(consumer, [publisher.close], [lane])


def confirmation_topics(settings: Settings, topics: TopicNames) -> list[str]:
    """What the erasure process reads: each service's confirmation topic, and the shared one
    of earlier releases only while a rolling upgrade needs it (`erasure_legacy_confirmations`)."""
    subscribed = list(topics.confirmations.values())
    if settings.erasure_legacy_confirmations:
        subscribed.append(topics.legacy_erasure_confirmed)
    return subscribed


def require_kafka(settings: Settings, command: str) -> str:
    """The Kafka bootstrap servers, or a start-up error naming the command that needs them."""
    if not settings.kafka_bootstrap:
        raise StartupError(
            detail=f"`{command}` needs LIFECYCLE_KAFKA_BOOTSTRAP; with Kafka off, "
            "`lifecycle serve` runs it in-process"
        )
    return settings.kafka_bootstrap


# Kafka off: a reference service over the in-process log


def in_process_consumer(
    name: str,
    settings: Settings,
    database: Database,
    publisher: InProcessPublisher,
    topics: TopicNames,
    *,
    mailer: Mailer | None = None,
    retry: RetryPolicy | None = None,
    poll_timeout_s: float = 0.5,
) -> Consumer:
    """One reference service reading the in-process log (the caller owns `database`)."""
    return _service_consumer(
        name,
        settings,
        database,
        topics=topics,
        publisher=publisher,
        source_of=lambda subscribed: InProcessSource(publisher, subscribed),
        mailer=mailer,
        retry=retry,
        poll_timeout_s=poll_timeout_s,
    )
