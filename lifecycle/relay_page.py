"""One page of the relay: notifications read from the log and made into the records to publish.

Reading a page has no effect on Kafka or on the relay's position, so the relay can read the
next page while Kafka acknowledges the one before (`lifecycle.relay`).

Only a Registered event's personal values reach a record (the profile's address and name; an
edit's profile takes them from its account's Registered event): every other event is read with
its sealed values left sealed, and only the keys of the accounts whose Registered event is read
are looked up, in one query for the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification, StoredEvent
from eventsourcing.utils import resolve_topic

from lifecycle import event_names, tracing
from lifecycle.application import Accounts
from lifecycle.crypto import PersonalDataMapper
from lifecycle.data_export_aggregate import DataExport
from lifecycle.domain import Account
from lifecycle.publishing import export_request_record, records_of
from schemas.contract import Record, TopicNames, lifecycle_event_id

# topic, key, headers, value: what `Publisher.publish` takes.
Outgoing = tuple[str, bytes, Sequence[tuple[str, bytes]], bytes | None]


@dataclass(frozen=True)
class Page:
    """Notifications `first`..`last` (read from `start`, `size` of them) as records."""

    start: int
    first: int
    last: int
    size: int
    records: list[Outgoing]
    # Each Account event's timestamp (taken just before its commit): the ack latency.
    stamps: list[datetime]


class PageReader:
    """Reads pages of the notification log and encodes their records."""

    def __init__(self, accounts: Accounts, topics: TopicNames, log: Any) -> None:
        self.accounts = accounts
        self.topics = topics
        self._log = log

    def read(self, start: int, limit: int) -> Page | None:
        """The page of up to `limit` notifications from `start`; None when there are none."""
        notifications = self.accounts.recorder.select_notifications(start=start, limit=limit)
        if not notifications:
            return None
        unopened = {
            n.id: self._account_event(n, opened=False)
            for n in notifications
            if n.topic != event_names.REGISTERED
        }
        db = self.accounts.database
        registering = {
            db.to_uuid(n.originator_id) for n in notifications if n.topic == event_names.REGISTERED
        }
        wanted = {
            event.originator_id
            for event in unopened.values()
            if isinstance(event, Account.PreferencesEdited)
            and event.notifications is not None
            and event.originator_id not in registering
        }
        self.accounts.vault.prefetch(registering | wanted)
        registered = self._registrations(wanted)
        records: list[Outgoing] = []
        stamps: list[datetime] = []
        for notification in notifications:
            request = self._export_request(notification)
            if request is not None:
                records.append(
                    (self.topics.export_requested, request.key, request.headers, request.value)
                )
                continue
            event = (
                self._account_event(notification, opened=True)
                if notification.topic == event_names.REGISTERED
                else unopened[notification.id]
            )
            if event is None:
                continue
            if isinstance(event, Account.Registered):
                registered[event.originator_id] = event
            stamps.append(event.timestamp)
            traced = self._trace_headers(notification, event) if tracing.enabled() else []
            for topic, record in self._records_for(event, notification.id, registered):
                headers = [*record.headers, *traced] if traced else record.headers
                records.append((topic, record.key, headers, record.value))
        return Page(
            start=start,
            first=notifications[0].id,
            last=notifications[-1].id,
            size=len(notifications),
            records=records,
            stamps=stamps,
        )

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
        self,
        event: Account.Event,
        notification_id: int,
        registered: dict[UUID, Account.Registered],
    ) -> list[tuple[str, Record]]:
        records = list(
            records_of(
                event,
                self.topics,
                registered[event.originator_id]
                if isinstance(event, Account.PreferencesEdited) and event.notifications is not None
                else None,
            )
        )
        if not records:
            self._log.error(
                "relay.event_not_in_contract",
                event=type(event).__qualname__,
                notification=notification_id,
            )
        return records

    def _registrations(self, wanted: set[UUID]) -> dict[UUID, Account.Registered]:
        """The Registered event of each account whose notifications a page's edit changes,
        when the page does not hold it: one query for the page, not one per edit."""
        if not wanted:
            return {}
        db = self.accounts.database
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
