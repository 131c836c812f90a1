"""The processes behind the API: relay, scout/chat/mail erasers, and the erasure consumer.

With Kafka configured each runs as its own process (`lifecycle relay`, `lifecycle consume
scout|chat|mail`, `lifecycle erasure`): `run_relay`, `run_consumer`, `run_erasure` below, each
until its `stop` event is set. With Kafka off (the embedded default), `start_workers` runs all
of them as threads inside `lifecycle serve`, over an in-process log, so a withdrawal completes
to `Purged` in one process; `ElectedWorkers` keeps that set to one process of `serve
--workers N` (a lock picks it). What runs is built by `lifecycle.bootstrap`; this module
only starts and stops it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import structlog
import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess

from consumers.faults import RetryPolicy
from consumers.kit import Consumer
from consumers.mailer import Mailer
from lifecycle.application import Accounts
from lifecycle.bootstrap import (
    build_accounts,
    build_data_exports,
    build_erasure,
    check_service_store,
    confirmation_topics,
    data_export_consumer,
    erasure_consumer,
    in_process_consumer,
    kafka_consumer,
    kafka_data_export_consumer,
    kafka_erasure_consumer,
    require_kafka,
    service_database,
)
from lifecycle.data_export.service import DataExports
from lifecycle.erasure.process import ErasureProcess
from lifecycle.kafka.inprocess import InProcessPublisher
from lifecycle.kafka.producer import KafkaPublisher
from lifecycle.kafka.source import InProcessSource
from lifecycle.logs import get_logger
from lifecycle.probe import Probe
from lifecycle.relay import Relay
from lifecycle.settings import Settings
from lifecycle.storage import Database, single_active_lock
from schemas.contract import ERASING_SERVICES, ERASURE_GROUP, TopicNames
from schemas.data_export import EXPORT_GROUP

log = get_logger(__name__)


# Entry points for the CLI (Kafka configured): one process kind each, until `stop` is set


def run_relay(
    settings: Settings,
    stop: threading.Event,
    *,
    topics: TopicNames | None = None,
    probe: Probe | None = None,
) -> None:
    """`lifecycle relay`: publish the notification log to Kafka."""
    bootstrap = require_kafka(settings, "relay")
    accounts = build_accounts(settings)
    publisher = KafkaPublisher(bootstrap, security=settings.kafka_security)
    try:
        relay = Relay(accounts, publisher, topics=topics or settings.topics)
        if probe is not None:
            probe.watch(relay)
        relay.run(stop)
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
    probe: Probe | None = None,
) -> None:
    """`lifecycle consume scout|chat|mail`: one reference service, its store in schema `name`."""
    consumer = kafka_consumer(name, settings, topics=topics, schema=schema)
    if probe is not None:
        probe.watch(*consumer.workers())
    consumer.run(stop)


def run_erasure(
    settings: Settings,
    stop: threading.Event,
    *,
    topics: TopicNames | None = None,
    probe: Probe | None = None,
) -> None:
    """`lifecycle erasure`: confirmations in, `Purged` out."""
    require_kafka(settings, "erasure")  # before any connection
    accounts = build_accounts(settings)
    try:
        consumer = kafka_erasure_consumer(settings, accounts, topics=topics)
        if probe is not None:
            probe.watch(*consumer.workers())
        consumer.run(stop)
    finally:
        accounts.close()


def run_data_exports(
    settings: Settings,
    stop: threading.Event,
    *,
    topics: TopicNames | None = None,
    probe: Probe | None = None,
) -> None:
    """`lifecycle data-exports`: the services' parts in, and expired exports' keys out."""
    require_kafka(settings, "data-exports")  # before any connection
    accounts = build_accounts(settings)
    try:
        consumer = kafka_data_export_consumer(settings, accounts, topics=topics)
        if probe is not None:
            probe.watch(*consumer.workers())
        sweep = threading.Thread(
            target=_guarded(
                "data-export-sweep",
                partial(sweep_data_exports, build_data_exports(accounts, settings)),
            ),
            args=(stop,),
            name="worker-data-export-sweep",
            daemon=True,
        )
        sweep.start()
        consumer.run(stop)
    finally:
        accounts.close()


# An expired export's key goes within this long (every read also ends an expired export).
SWEEP_INTERVAL_S = 60.0


def sweep_data_exports(
    exports: DataExports, stop: threading.Event, interval_s: float = SWEEP_INTERVAL_S
) -> None:
    """End expired exports (their keys destroyed) now and then, until stopped."""
    while not stop.wait(interval_s):
        try:
            exports.expire_due()
        except Exception as error:  # the next round tries again; the reads end them too
            log.warning("data_export.sweep_failed", error=type(error).__name__)


# Kafka off: everything in threads of one process


class InProcessRelay(Relay):
    """The in-process log lives in memory, so this relay's position does too.

    A restart republishes the notification log from the start into the new log; consumers
    skip what they already handled by `ce_id`, and anything relayed but not yet consumed
    before the restart is delivered again rather than lost.
    """

    _memory_position = 0

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
            check_service_store(database, name)
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
            InProcessSource(publisher, confirmation_topics(settings, topics)),
            publisher,
            topics,
            legacy=settings.erasure_legacy_confirmations,
            retry=retry,
            poll_timeout_s=poll_interval_s,
            mark_retention=timedelta(days=settings.consumer_mark_retention_days),
        )
        workers.consumers[ERASURE_GROUP] = confirmations
        runners.append((ERASURE_GROUP, confirmations.run))
        exports = build_data_exports(accounts, settings)
        parts = data_export_consumer(
            exports,
            InProcessSource(publisher, list(topics.inputs_of(EXPORT_GROUP))),
            publisher,
            topics,
            retry=retry,
            poll_timeout_s=poll_interval_s,
        )
        workers.consumers[EXPORT_GROUP] = parts
        runners.append((EXPORT_GROUP, parts.run))
        runners.append(("data-export-sweep", partial(sweep_data_exports, exports)))
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


class ElectedWorkers:
    """`start_workers` in exactly one process, however many `lifecycle serve --workers N` runs.

    With Kafka configured each worker is a process of its own (the relay holds its lock,
    consumers share partitions through their group): nothing to elect. With Kafka off every
    serving process stands by for the `workers` lock and runs the relay, the three services
    and the erasure consumer only while it holds it. If the holder dies (or loses its lock's
    connection), a standby takes over within `retry_s`; its relay republishes the log from the
    start into its own in-process log, and consumers skip what they already handled.
    """

    def __init__(
        self,
        settings: Settings,
        accounts: Accounts,
        erasure: ErasureProcess,
        *,
        retry_s: float = 2.0,
    ) -> None:
        self.settings = settings
        self.accounts = accounts
        self.erasure = erasure
        self.retry_s = retry_s
        self.workers: Workers | None = None
        self._lock = single_active_lock(accounts.database, "workers", "in-process")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._standing_by = False

    @property
    def active(self) -> bool:
        """This process runs the workers."""
        return self.workers is not None

    @property
    def relay(self) -> Relay | None:
        """The relay this process runs (None on a standby), for readiness and metrics."""
        return None if self.workers is None else self.workers.relay

    @property
    def consumers(self) -> dict[str, Consumer]:
        return {} if self.workers is None else dict(self.workers.consumers)

    def start(self) -> ElectedWorkers:
        """Take the first turn now (a lone server starts its workers before serving), then
        stand by on a thread of its own."""
        if self.settings.kafka_bootstrap:
            return self
        self._turn()
        self._thread = threading.Thread(target=self._watch, name="worker-election", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.workers is not None:
            self.workers.stop()
            self.workers = None
        self._lock.release()

    def _watch(self) -> None:
        while not self._stop.wait(self.retry_s):
            self._turn()

    def _turn(self) -> None:
        try:
            self._elect()
        except Exception as error:  # the database is away: try again next turn
            log.warning("workers.election_failed", pid=os.getpid(), error=type(error).__name__)

    def _elect(self) -> None:
        if self.workers is not None:
            if self._lock.alive():
                return
            log.warning("workers.lock_lost", pid=os.getpid())
            self.workers.stop()
            self.workers = None
            self._lock.release()
        if not self._lock.try_acquire():
            if not self._standing_by:
                log.info("workers.standby", pid=os.getpid())
                self._standing_by = True
            return
        try:
            self.workers = start_workers(self.settings, self.accounts, erasure=self.erasure)
        except BaseException:
            self._lock.release()
            raise
        self._standing_by = False
        log.info("workers.elected", pid=os.getpid(), workers=self.workers.running)


class _TcpConfig(uvicorn.Config):
    """uvicorn binds the shared socket of `workers=N` without naming TCP as its protocol, so
    asyncio never sets TCP_NODELAY on the connections it accepts; a response then written in
    two sends waits for the client's delayed ACK: 40 ms a request on a keep-alive connection
    (20 req/s on one connection instead of hundreds). The same socket, its protocol named."""

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        tcp = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
        tcp.set_inheritable(True)
        return tcp


def run_server_processes(factory: str, workers: int, **options: Any) -> None:
    """`uvicorn.run(factory, factory=True, workers=N, ...)`, with TCP_NODELAY on connections."""
    config = _TcpConfig(factory, factory=True, workers=workers, **options)
    Multiprocess(config, sockets=[config.bind_socket()]).run()


def log_with_pid() -> None:
    """Every structlog line of this process names its pid: the processes of `serve
    --workers N` share one stderr."""

    def add_pid(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event.setdefault("pid", os.getpid())
        return event

    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[add_pid, *processors])


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
