"""The processes behind the API: relay, scout/chat/mail erasers, and the erasure consumer.

With Kafka configured each runs as its own process (`lifecycle relay`, `lifecycle consume
scout|chat|mail`, `lifecycle erasure`): `run_relay`, `run_consumer`, `run_erasure` below, each
until its `stop` event is set. With Kafka off (the embedded default), `start_workers` runs all
of them as threads inside `lifecycle serve`, over an in-process log, so a withdrawal completes
to `Purged` in one process. What runs is built by `lifecycle.bootstrap`; this module only
starts and stops it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from consumers.faults import RetryPolicy
from consumers.kit import Consumer
from consumers.mailer import Mailer
from lifecycle.application import Accounts
from lifecycle.bootstrap import (
    build_accounts,
    build_erasure,
    erasure_consumer,
    in_process_consumer,
    kafka_consumer,
    kafka_erasure_consumer,
    require_kafka,
    service_database,
)
from lifecycle.erasure import ErasureProcess
from lifecycle.kafka.inprocess import InProcessPublisher
from lifecycle.kafka.producer import KafkaPublisher
from lifecycle.kafka.source import InProcessSource
from lifecycle.logs import get_logger
from lifecycle.relay import Relay
from lifecycle.settings import Settings
from lifecycle.storage import Database
from schemas.contract import ERASING_SERVICES, ERASURE_GROUP, TopicNames

log = get_logger(__name__)


# Entry points for the CLI (Kafka configured): one process kind each, until `stop` is set


def run_relay(
    settings: Settings, stop: threading.Event, *, topics: TopicNames | None = None
) -> None:
    """`lifecycle relay`: publish the notification log to Kafka."""
    bootstrap = require_kafka(settings, "relay")
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
    require_kafka(settings, "erasure")  # before any connection
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
    mailer: Mailer | None = None,
    retry: RetryPolicy | None = None,
    poll_interval_s: float = 0.2,
    erasure: ErasureProcess | None = None,
) -> Workers:
    """For `lifecycle serve`: with Kafka configured, nothing (each worker is its own process);
    with Kafka off, the relay, the three services and the erasure consumer, in threads.
    `erasure` is the erasure process to run (built here when not given)."""
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
            consumer = in_process_consumer(
                name,
                settings,
                database,
                publisher,
                topics,
                mailer=mailer,
                retry=retry,
                poll_timeout_s=poll_interval_s,
            )
            workers.consumers[name] = consumer
            runners.append((name, consumer.run))
        confirmations = erasure_consumer(
            erasure or build_erasure(accounts, settings),
            InProcessSource(publisher, [topics.erasure_confirmed]),
            publisher,
            topics,
            retry=retry,
            poll_timeout_s=poll_interval_s,
        )
        workers.consumers[ERASURE_GROUP] = confirmations
        runners.append((ERASURE_GROUP, confirmations.run))
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
