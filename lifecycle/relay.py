"""Follow the application's notification log and publish each Account event to Kafka.

The position is stored in `relay_position` in the application's own database, written only
after the publisher's flush succeeded: a restart resumes from it, so nothing is lost and
nothing is reordered. Delivery is at least once; a crash between flush and position write
republishes that batch with the same `ce_id`s, which consumers dedupe.

Idle, it waits for the next commit (`lifecycle.notify`: PostgreSQL's NOTIFY, the poll interval
as fallback), and each `relay.published` line says how long the batch's events waited from
commit to Kafka's acknowledgement (`commit_to_ack_ms`, newest event; `..._max_ms`, oldest).

One relay publishes at a time: on PostgreSQL it holds an advisory lock on a connection of its
own for as long as it runs; on SQLite an exclusive `flock` on a file beside the database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from uuid import UUID

from eventsourcing.persistence import Notification, StoredEvent
from eventsourcing.utils import resolve_topic

from consumers.faults import DependencyWait, infrastructure_fault
from lifecycle import event_names, tracing
from lifecycle.application import Accounts
from lifecycle.backoff import Backoff, Delays
from lifecycle.crypto import PersonalDataMapper
from lifecycle.data_export_aggregate import DataExport
from lifecycle.domain import Account
from lifecycle.kafka.producer import Publisher, PublishError
from lifecycle.logs import get_logger
from lifecycle.notify import waiter_for
from lifecycle.publishing import export_request_record, records_of
from lifecycle.storage import Database, single_active_lock
from schemas.contract import (
    Record,
    TopicNames,
    lifecycle_event_id,
)


class Relay:
    """Publishes Account events in notification order; `run()` until stopped."""

    def __init__(
        self,
        accounts: Accounts,
        publisher: Publisher,
        name: str = "kafka",
        *,
        topics: TopicNames | None = None,
        batch_size: int = 200,
        poll_interval_s: float = 0.5,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 5.0,
        observe_ack_latency: Callable[[float], None] | None = None,
    ) -> None:
        self.accounts = accounts
        self.publisher = publisher
        self.name = name
        self.topics = topics or TopicNames()
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.backoff = Backoff(initial_backoff_s, max_backoff_s)
        self.observe_ack_latency = observe_ack_latency
        self._db: Database = accounts.database
        self._table = self._db.table("relay_position")
        self._log = get_logger(__name__).bind(relay=name)
        # The dependency this relay is waiting for ("database", "broker"), None when working.
        self._wait = DependencyWait(self._log, "relay")
        self._lock = single_active_lock(self._db, "relay", name)
        # The current batch's Registered events by account, for its edits' profile records.
        self._registered: dict[UUID, Account.Registered] = {}
        # Read when first needed (constructors do no I/O): on taking the lock, or by `position`.
        self._position: int | None = None
        # When Kafka last acknowledged a batch of this relay (metrics; None: not yet).
        self.published_at: datetime | None = None

    # Metrics

    @property
    def position(self) -> int:
        """The last notification id whose records Kafka has acknowledged."""
        if self._position is None:
            self._position = self._load_position()
        return self._position

    @property
    def lag(self) -> int:
        """Notifications recorded but not yet published."""
        newest = self.accounts.recorder.max_notification_id() or 0
        return max(0, newest - self.position)

    @property
    def is_active(self) -> bool:
        """Holds the lock, so it is the relay that publishes."""
        return self._lock.held

    # Running

    def run_once(self) -> int:
        """Relay one batch; returns how many notifications the position moved past.

        Returns 0 without publishing while another relay holds the lock.
        """
        if not self._hold_lock():
            self._log.info("relay.standby", position=self._position)
            return 0
        return self._relay_batch()

    def run(self, stop: threading.Event) -> None:
        """Relay until `stop` is set: woken by each commit when idle (PostgreSQL NOTIFY,
        the poll interval as fallback), capped backoff on failures."""
        delays = self.backoff.delays()
        standby = False
        waiter = waiter_for(self.accounts.recorder, stop, self.poll_interval_s)
        try:
            while not stop.is_set():
                try:
                    if not self._hold_lock():
                        if not standby:
                            self._log.info("relay.standby", position=self._position)
                            standby = True
                        self._wait.recovered()
                        stop.wait(self.poll_interval_s)
                        continue
                    standby = False
                    processed = self._relay_batch()
                    self._wait.recovered()
                    delays.reset()
                    if processed < self.batch_size:
                        waiter.wait()
                except Exception as error:
                    self._waiting(error, delays.next_s)
                    self._back_off(stop, delays)
                    waiter.reset()
        finally:
            waiter.close()
            self._lock.release()
            self._log.info("relay.stopped", position=self._position)

    def _waiting(self, error: Exception, backoff: float) -> None:
        """A dependency down is waited out (`waiting_for` names it, for readiness); anything
        else is a bug, logged as a failure and retried the same way."""
        if isinstance(error, PublishError):
            dependency: str | None = "broker"
            event, cause = "relay.kafka_unreachable", error.cause
        else:
            dependency = infrastructure_fault(error)
            event, cause = "relay.database_unreachable", type(error).__name__
        if dependency is None:
            self._log.error(
                "relay.failed",
                error=type(error).__name__,
                position=self._position,
                retry_in_s=backoff,
            )
            return
        self._wait.waiting(
            dependency, event, error=cause, position=self._position, retry_in_s=backoff
        )

    @property
    def waiting_for(self) -> str | None:
        return self._wait.waiting_for

    def close(self) -> None:
        """Give up the lock (a standby relay takes over); the publisher stays the caller's."""
        self._lock.release()

    def _back_off(self, stop: threading.Event, delays: Delays) -> None:
        delays.wait(stop)
        try:
            # Resume from what is recorded: whatever happened since was not acknowledged.
            self._position = self._load_position()
        except Exception as error:
            # The database is still away: the next attempt reads it again.
            self._log.warning("relay.position_unreadable", error=type(error).__name__)

    def _hold_lock(self) -> bool:
        if self._lock.held:
            if self._lock.alive():
                return True
            self._log.warning("relay.lock_lost", position=self._position)
            self._lock.release()
        if not self._lock.try_acquire():
            return False
        # Another relay may have moved on while this one stood by.
        self._position = self._load_position()
        self._log.info("relay.active", position=self._position)
        return True

    # One batch

    def _relay_batch(self) -> int:
        notifications = self.accounts.recorder.select_notifications(
            start=self.position + 1, limit=self.batch_size
        )
        if not notifications:
            return 0
        published = 0
        stamps: list[datetime] = []
        # Only a Registered event's personal values reach a record (the profile's address and
        # name; an edit's profile takes them from its account's Registered event): every other
        # event is read with its sealed values left sealed, and only the keys of the accounts
        # whose Registered event is read are looked up, in one query for the batch.
        unopened = {
            n.id: self._account_event(n, opened=False)
            for n in notifications
            if n.topic != event_names.REGISTERED
        }
        registering = {
            self._db.to_uuid(n.originator_id)
            for n in notifications
            if n.topic == event_names.REGISTERED
        }
        wanted = {
            event.originator_id
            for event in unopened.values()
            if isinstance(event, Account.PreferencesEdited)
            and event.notifications is not None
            and event.originator_id not in registering
        }
        self.accounts.vault.prefetch(registering | wanted)
        self._registered = self._registrations(wanted)
        for notification in notifications:
            request = self._export_request(notification)
            if request is not None:
                self.publisher.publish(
                    self.topics.export_requested, request.key, request.headers, request.value
                )
                published += 1
                continue
            event = (
                self._account_event(notification, opened=True)
                if notification.topic == event_names.REGISTERED
                else unopened[notification.id]
            )
            if event is None:
                continue
            if isinstance(event, Account.Registered):
                self._registered[event.originator_id] = event
            stamps.append(event.timestamp)
            traced = self._trace_headers(notification, event) if tracing.enabled() else []
            for topic, record in self._records_for(event, notification.id):
                headers = [*record.headers, *traced] if traced else record.headers
                self.publisher.publish(topic, record.key, headers, record.value)
                published += 1
        self.publisher.flush()
        acked = datetime.now(UTC)
        last = notifications[-1].id
        self._save_position(last)
        self._position = last
        self.published_at = acked
        latency = self._ack_latency(stamps, acked)
        self._log.info(
            "relay.published",
            first=notifications[0].id,
            position=last,
            notifications=len(notifications),
            records=published,
            **latency,
        )
        return len(notifications)

    def _trace_headers(
        self, notification: Notification, event: Account.Event
    ) -> list[tuple[str, bytes]]:
        """`ce_traceparent`/`ce_tracestate` of a producer span in the trace of the command that
        stored the event (`lifecycle.tracing`)."""
        return tracing.publish_headers(
            notification.state,
            type(event).__name__,
            {
                "lifecycle.account_id": str(event.originator_id),
                "lifecycle.notification_id": notification.id,
                "messaging.message.id": lifecycle_event_id(
                    event.originator_id, event.originator_version
                ),
            },
        )

    def _ack_latency(self, stamps: list[datetime], acked: datetime) -> dict[str, float]:
        """From each event's commit (its timestamp, taken just before the commit) to Kafka's
        acknowledgement of its records: the batch's newest and oldest, in milliseconds."""
        if not stamps:
            return {}
        waits = [max(0.0, (acked - stamp).total_seconds()) for stamp in stamps]
        if self.observe_ack_latency is not None:
            for wait in waits:
                self.observe_ack_latency(wait)
        return {
            "commit_to_ack_ms": round(min(waits) * 1000, 1),
            "commit_to_ack_max_ms": round(max(waits) * 1000, 1),
        }

    def _account_event(self, notification: Notification, *, opened: bool) -> Account.Event | None:
        """The decoded Account event (its personal values left sealed unless `opened`); None
        for EmailClaim and anything else that is not the public account stream."""
        event_class = resolve_topic(notification.topic)
        if not (isinstance(event_class, type) and issubclass(event_class, Account.Event)):
            return None
        mapper = self.accounts.mapper
        event = (
            mapper.to_domain_event(notification)
            if opened or not isinstance(mapper, PersonalDataMapper)
            else mapper.to_unopened_domain_event(notification)
        )
        assert isinstance(event, Account.Event)
        return event

    def _export_request(self, notification: Notification) -> Record | None:
        """A data export's request (or ops' retry of some services) as the services read it;
        None for every other notification."""
        event_class = resolve_topic(notification.topic)
        if event_class not in (DataExport.Requested, DataExport.RetryRequested):
            return None
        event = self.accounts.mapper.to_domain_event(notification)
        assert isinstance(event, DataExport.Requested | DataExport.RetryRequested)
        export: object = self.accounts.repository.get(
            event.originator_id, version=event.originator_version
        )
        assert isinstance(export, DataExport)
        return export_request_record(export, event)

    def _records_for(
        self, event: Account.Event, notification_id: int
    ) -> Iterator[tuple[str, Record]]:
        registered = (
            self._registered[event.originator_id]
            if isinstance(event, Account.PreferencesEdited) and event.notifications is not None
            else None
        )
        records = list(records_of(event, self.topics, registered))
        if not records:
            self._log.error(
                "relay.event_not_in_contract",
                event=type(event).__qualname__,
                notification=notification_id,
            )
        yield from records

    def _registrations(self, wanted: set[UUID]) -> dict[UUID, Account.Registered]:
        """The Registered event of each account whose notifications a batch's edit changes,
        when the batch does not hold it: one query for the batch, not one per edit."""
        if not wanted:
            return {}
        db = self._db
        where, params = db.any_of("originator_id", [db.id_param(db.to_uuid(i)) for i in wanted])
        with db.transaction(commit=False) as cursor:
            rows = cursor.execute(
                "SELECT originator_id, originator_version, topic, state "
                f"FROM {db.events_table} WHERE originator_version = 1 AND {where}",
                params,
            ).fetchall()
        found: dict[UUID, Account.Registered] = {}
        for originator_id, version, topic, state in rows:
            stored = StoredEvent(db.to_uuid(originator_id), version, topic, bytes(state))
            event = self.accounts.mapper.to_domain_event(stored)
            assert isinstance(event, Account.Registered)
            found[event.originator_id] = event
        return found

    # Position

    def _load_position(self) -> int:
        with self._db.transaction(commit=False) as cursor:
            row = cursor.execute(
                f"SELECT position FROM {self._table} WHERE name = %s", (self.name,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def _save_position(self, position: int) -> None:
        with self._db.transaction() as cursor:
            cursor.execute(
                f"INSERT INTO {self._table} AS saved (name, position) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position, "
                f"updated_at = {self._db.now} WHERE saved.position < excluded.position",
                (self.name, position),
            )
