"""The processes behind the API: relay, scout/chat/mail erasers, and the erasure consumer.

With Kafka configured each runs as its own process (`lifecycle relay`, `lifecycle consume
scout|chat|mail`, `lifecycle erasure`): `run_relay`, `run_consumer`, `run_erasure` below, each
until its `stop` event is set. With Kafka off (the embedded default), `start_workers` runs all
of them as threads inside `lifecycle serve`, over an in-process log, so a withdrawal completes
to `Purged` in one process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from consumers import chat, mail, scout
from consumers.kit import (
    Consumer,
    Handler,
    HandlerResult,
    Hooks,
    InProcessSource,
    KafkaSource,
    PoisonRecord,
    RetryPolicy,
    Source,
)
from consumers.store import ConsumerStore, open_database
from lifecycle.application import Accounts
from lifecycle.bootstrap import StartupError, build_accounts
from lifecycle.erasure import CONFIRMED, Confirmation, ErasureProcess, erasure_process
from lifecycle.errors import ConcurrentUpdateError, LifecycleError
from lifecycle.kafka.inprocess import InProcessPublisher
from lifecycle.kafka.producer import KafkaPublisher, Publisher
from lifecycle.logs import get_logger
from lifecycle.relay import Relay
from lifecycle.settings import Settings
from lifecycle.storage import Cursor, Database
from schemas.contract import (
    ERASING_SERVICES,
    ERASURE_GROUP,
    Envelope,
    ErasureConfirmedV1,
    TopicNames,
)

# The erasure consumer keeps its marks in the lifecycle database, beside the event store.
ERASURE_TABLE_PREFIX = "erasure_"

log = get_logger(__name__)


# The erasure consumer


class ErasureHandler(Handler):
    """Confirmations in; `ErasureProcess` records them and purges once all services confirmed.

    The process writes in transactions of its own (the purge goes through the event store), so
    it runs in `prepare`; it is idempotent, so a repeat after a crash changes nothing.
    """

    def __init__(self, process: ErasureProcess) -> None:
        self.process = process

    def prepare(self, envelope: Envelope) -> None:
        data = envelope.data
        if not isinstance(data, ErasureConfirmedV1):
            return
        confirmation = Confirmation(
            account_id=data.account_id,
            service=data.service,
            outcome=CONFIRMED,
            rows_removed=data.rows_removed,
            confirmation_id=envelope.id,
        )
        try:
            self.process.handle(confirmation)
        except ConcurrentUpdateError:
            raise  # someone else's progress: retried
        except LifecycleError as error:
            raise PoisonRecord(error.code) from None

    def handle(self, envelope: Envelope, cursor: Cursor) -> HandlerResult:
        if isinstance(envelope.data, ErasureConfirmedV1):
            return HandlerResult(outcome="confirmation_recorded")
        return HandlerResult(outcome="ignored")


# Building the pieces


def service_database(settings: Settings, name: str, schema: str | None = None) -> Database:
    """A service's own store: schema `name` on the PostgreSQL server, or `<name>.sqlite3`
    beside the embedded lifecycle database."""
    if settings.is_embedded:
        lifecycle_file = Path(settings.database_url.removeprefix("sqlite:///"))
        return open_database(f"sqlite:///{lifecycle_file.parent / f'{name}.sqlite3'}", name)
    return open_database(settings.database_url, schema or name)


def service_handler(
    name: str, database: Database, topics: TopicNames, mailer: mail.Mailer | None = None
) -> tuple[Handler, list[str]]:
    """The handler of one reference service and the topics it reads."""
    if name == "scout":
        return scout.ScoutHandler(database, topics), scout.subscribed_topics(topics)
    if name == "chat":
        return chat.ChatHandler(database, topics), chat.subscribed_topics(topics)
    if name == "mail":
        handler = mail.MailHandler(database, topics, mailer or mail.DiscardingMailer())
        return handler, mail.subscribed_topics(topics)
    _check_service(name)
    raise AssertionError(name)


def _check_service(name: str) -> None:
    if name not in ERASING_SERVICES:
        raise StartupError(
            detail=f"unknown consumer {name!r}: expected one of {', '.join(ERASING_SERVICES)}"
        )


def mailer_for(settings: Settings) -> mail.Mailer:
    if settings.smtp_host:
        return mail.SmtpMailer(settings.smtp_host, settings.smtp_port)
    return mail.DiscardingMailer()


@dataclass
class ConsumerRun:
    """A built consumer and what to close after its run."""

    consumer: Consumer
    closers: list[Callable[[], None]] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        try:
            self.consumer.run(stop)
        finally:
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
    mailer: mail.Mailer | None = None,
    retry: RetryPolicy | None = None,
    hooks: Hooks | None = None,
) -> ConsumerRun:
    """One reference service (`scout`, `chat`, `mail`) reading Kafka, in its own store."""
    bootstrap = _require_kafka(settings, f"consume {name}")
    _check_service(name)
    topics = topics or settings.topics
    database = service_database(settings, name, schema)
    closers: list[Callable[[], None]] = [database.close]
    try:
        handler, subscribed = service_handler(
            name, database, topics, mailer or mailer_for(settings)
        )
        publisher = KafkaPublisher(bootstrap, client_id=f"{topics.group_id(name)}-outbox")
        closers.append(publisher.close)
        source = KafkaSource(bootstrap, subscribed, topics.group_id(name))
    except BaseException:
        _close_all(closers)
        raise
    consumer = Consumer(
        name,
        source,
        ConsumerStore(database),
        handler,
        publisher,
        dlq_topic=topics.dlq(name),
        retry=retry,
        hooks=hooks,
    )
    return ConsumerRun(consumer, closers)


def kafka_erasure_consumer(
    settings: Settings,
    accounts: Accounts,
    *,
    topics: TopicNames | None = None,
    retry: RetryPolicy | None = None,
    hooks: Hooks | None = None,
) -> ConsumerRun:
    """The erasure process reading confirmations from Kafka (the caller owns `accounts`)."""
    bootstrap = _require_kafka(settings, "erasure")
    topics = topics or settings.topics
    publisher = KafkaPublisher(bootstrap, client_id=f"{topics.group_id(ERASURE_GROUP)}-dlq")
    try:
        source = KafkaSource(bootstrap, [topics.erasure_confirmed], topics.group_id(ERASURE_GROUP))
    except BaseException:
        publisher.close()
        raise
    consumer = _erasure_consumer(
        settings=settings,
        accounts=accounts,
        source=source,
        publisher=publisher,
        topics=topics,
        retry=retry,
        hooks=hooks,
    )
    return ConsumerRun(consumer, [publisher.close])


def _erasure_consumer(
    *,
    settings: Settings,
    accounts: Accounts,
    source: Source,
    publisher: Publisher,
    topics: TopicNames,
    retry: RetryPolicy | None,
    hooks: Hooks | None,
) -> Consumer:
    return Consumer(
        ERASURE_GROUP,
        source,
        ConsumerStore(accounts.database, table_prefix=ERASURE_TABLE_PREFIX),
        ErasureHandler(erasure_process(accounts, settings)),
        publisher,
        dlq_topic=topics.dlq(ERASURE_GROUP),
        retry=retry,
        hooks=hooks,
    )


# Entry points for the CLI (Kafka configured): one process kind each, until `stop` is set


def run_relay(
    settings: Settings, stop: threading.Event, *, topics: TopicNames | None = None
) -> None:
    """`lifecycle relay`: publish the notification log to Kafka."""
    bootstrap = _require_kafka(settings, "relay")
    accounts = build_accounts(settings)
    publisher = KafkaPublisher(bootstrap)
    try:
        Relay(accounts, publisher, topics=topics or settings.topics).run(stop)
    finally:
        publisher.close()
        accounts.close()


def run_consumer(
    name: str,
    settings: Settings,
    stop: threading.Event,
    *,
    topics: TopicNames | None = None,
    schema: str | None = None,
) -> None:
    """`lifecycle consume scout|chat|mail`: one reference service, its store in schema `name`."""
    kafka_consumer(name, settings, topics=topics, schema=schema).run(stop)


def run_erasure(
    settings: Settings, stop: threading.Event, *, topics: TopicNames | None = None
) -> None:
    """`lifecycle erasure`: confirmations in, `Purged` out."""
    accounts = build_accounts(settings)
    try:
        kafka_erasure_consumer(settings, accounts, topics=topics).run(stop)
    finally:
        accounts.close()


# Kafka off: everything in threads of one process


class InProcessRelay(Relay):
    """The in-process log lives in memory, so this relay's position does too.

    A restart republishes the notification log from the start into the new log; consumers
    skip what they already handled by `ce_id`, and anything relayed but not yet consumed
    before the restart is delivered again rather than lost.
    """

    _memory_position = 0

    def _create_table(self) -> None:
        return None

    def _load_position(self) -> int:
        return self._memory_position

    def _save_position(self, position: int) -> None:
        self._memory_position = position


@dataclass
class Workers:
    """Threads started by `start_workers`; `stop()` ends them and closes their stores."""

    stop_event: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    consumers: dict[str, Consumer] = field(default_factory=dict)
    stores: dict[str, Database] = field(default_factory=dict)
    publisher: InProcessPublisher | None = None
    relay: Relay | None = None

    def stop(self, timeout_s: float = 15.0) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=timeout_s)
            if thread.is_alive():
                log.warning("workers.thread_still_running", thread=thread.name)
        if self.relay is not None:
            self.relay.close()
        for database in self.stores.values():
            database.close()
        self.stores = {}

    @property
    def running(self) -> list[str]:
        return [thread.name for thread in self.threads if thread.is_alive()]


def start_workers(
    settings: Settings,
    accounts: Accounts,
    *,
    topics: TopicNames | None = None,
    mailer: mail.Mailer | None = None,
    retry: RetryPolicy | None = None,
    poll_interval_s: float = 0.2,
) -> Workers:
    """For `lifecycle serve`: with Kafka configured, nothing (each worker is its own process);
    with Kafka off, the relay, the three services and the erasure consumer, in threads."""
    workers = Workers()
    if settings.kafka_bootstrap:
        return workers
    topics = topics or settings.topics
    publisher = InProcessPublisher()
    workers.publisher = publisher
    try:
        relay = InProcessRelay(
            accounts,
            publisher,
            name="in-process",
            topics=topics,
            poll_interval_s=poll_interval_s,
        )
        workers.relay = relay
        runners: list[tuple[str, Callable[[threading.Event], None]]] = [("relay", relay.run)]
        for name in ERASING_SERVICES:
            database = service_database(settings, name)
            workers.stores[name] = database
            handler, subscribed = service_handler(
                name, database, topics, mailer or mailer_for(settings)
            )
            consumer = Consumer(
                name,
                InProcessSource(publisher, subscribed),
                ConsumerStore(database),
                handler,
                publisher,
                dlq_topic=topics.dlq(name),
                retry=retry,
                poll_timeout_s=poll_interval_s,
            )
            workers.consumers[name] = consumer
            runners.append((name, consumer.run))
        erasure = _erasure_consumer(
            settings=settings,
            accounts=accounts,
            source=InProcessSource(publisher, [topics.erasure_confirmed]),
            publisher=publisher,
            topics=topics,
            retry=retry,
            hooks=None,
        )
        erasure.poll_timeout_s = poll_interval_s
        workers.consumers[ERASURE_GROUP] = erasure
        runners.append((ERASURE_GROUP, erasure.run))
    except BaseException:
        workers.stop()
        raise
    for name, target in runners:
        thread = threading.Thread(
            target=_guarded(name, target), args=(workers.stop_event,), name=f"worker-{name}"
        )
        thread.daemon = True
        workers.threads.append(thread)
        thread.start()
    log.info("workers.started", workers=[name for name, _ in runners])
    return workers


def _guarded(
    name: str, target: Callable[[threading.Event], None]
) -> Callable[[threading.Event], None]:
    def run(stop: threading.Event) -> None:
        try:
            target(stop)
        except Exception as error:
            log.error("workers.crashed", worker=name, error=type(error).__name__)
            raise

    return run


def _require_kafka(settings: Settings, command: str) -> str:
    if not settings.kafka_bootstrap:
        raise StartupError(
            detail=f"`{command}` needs LIFECYCLE_KAFKA_BOOTSTRAP; with Kafka off, "
            "`lifecycle serve` runs it in-process"
        )
    return settings.kafka_bootstrap
