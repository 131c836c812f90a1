"""Reads for auditors and ops: an account's stored events, its timeline, the hash chain's head.

Personal fields come back as `[redacted]` unless the reader asks for them decrypted and the
reader's role is one of `decrypt_roles` (`LIFECYCLE_AUDIT_DECRYPT_ROLES`; nobody by default).
Every decrypted read is recorded before the values leave, in `personal_data_reads` (time,
account id, role, request id, how many events) and in the log as `audit.personal_values_read`;
never the values themselves. After purge the key is gone, so even a permitted reader gets
`[redacted]`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from lifecycle.account_terms import REDACTED, AccountStatus
from lifecycle.application import Accounts
from lifecycle.domain import Account
from lifecycle.errors import AccountNotFoundError, PermissionDeniedError
from lifecycle.logs import get_logger
from lifecycle.services.actions import Actor, PersonalDataReads
from projections.base import facts_mapper
from projections.hashchain import HashChain

log = get_logger(__name__)

# Attributes every event has, shown as fields of their own rather than in `data`.
ENVELOPE = ("originator_id", "originator_version", "timestamp", "originator_topic")


@dataclass(frozen=True)
class StoredFact:
    version: int
    stored_name: str  # the stored event type's name (lifecycle.event_names)
    event: str
    timestamp: datetime
    personal_fields: tuple[str, ...]
    data: dict[str, Any]


@dataclass(frozen=True)
class EventStream:
    account_id: UUID
    personal: Literal["redacted", "decrypted"]
    key_destroyed: bool
    events: list[StoredFact]


@dataclass(frozen=True)
class TimelineEntry:
    version: int
    event: str
    timestamp: datetime
    facts: dict[str, Any]


@dataclass(frozen=True)
class Timeline:
    account_id: UUID
    status: str
    events: list[TimelineEntry]


@dataclass(frozen=True)
class ChainHead:
    position: int
    link: str
    log_head: int
    lag: int


class AuditReads:
    def __init__(self, accounts: Accounts, decrypt_roles: Collection[str] = ()) -> None:
        self.accounts = accounts
        self.decrypt_roles = frozenset(decrypt_roles)
        self.reads = PersonalDataReads(accounts.database)

    def events(self, account_id: UUID, reader: Actor, *, decrypted: bool = False) -> EventStream:
        """Every stored event of the account, every attribute; personal fields `[redacted]`
        unless `decrypted` (refused unless the reader's role may, and recorded first)."""
        if decrypted and reader.role not in self.decrypt_roles:
            raise PermissionDeniedError(detail="this role may not read personal values")
        stored = self.accounts.recorder.select_events(account_id)
        redacted = [facts_mapper(self.accounts.mapper).to_domain_event(e) for e in stored]
        if not redacted or not isinstance(redacted[0], Account.Registered):
            raise AccountNotFoundError()
        key_destroyed = self.accounts.vault.is_destroyed(account_id)
        shown: list[Any] = redacted
        if decrypted:
            # Recorded first: if this cannot be written, no value leaves.
            self.reads.record(account_id, reader.role, reader.request_id, len(stored))
            log.info(
                "audit.personal_values_read",
                account_id=str(account_id),
                role=reader.role,
                request_id=reader.request_id,
                events=len(stored),
                key_destroyed=key_destroyed,
            )
            shown = [self.accounts.mapper.to_domain_event(event) for event in stored]
        events = [
            StoredFact(
                version=event.originator_version,
                stored_name=raw.topic,
                event=type(event).__qualname__,
                timestamp=event.timestamp,
                personal_fields=tuple(
                    name
                    for name in getattr(type(fact), "personal_fields", ())
                    if getattr(fact, name, None) == REDACTED
                ),
                data={k: v for k, v in vars(event).items() if k not in ENVELOPE},
            )
            for raw, fact, event in zip(stored, redacted, shown, strict=True)
        ]
        return EventStream(
            account_id=account_id,
            personal="decrypted" if decrypted and not key_destroyed else "redacted",
            key_destroyed=key_destroyed,
            events=events,
        )

    def timeline(self, account_id: UUID) -> Timeline:
        """The account's events with their facts, never a personal value (no key is used)."""
        mapper = facts_mapper(self.accounts.mapper)
        events: list[Any] = [
            mapper.to_domain_event(e) for e in self.accounts.recorder.select_events(account_id)
        ]
        if not events or not isinstance(events[0], Account.Registered):
            raise AccountNotFoundError()
        status = AccountStatus.ACTIVE
        entries = []
        for event in events:
            if isinstance(event, Account.WithdrawalRequested):
                status = AccountStatus.WITHDRAWING
            elif isinstance(event, Account.Purged):
                status = AccountStatus.PURGED
            entries.append(
                TimelineEntry(
                    event.originator_version,
                    type(event).__name__,
                    event.timestamp,
                    timeline_facts(event),
                )
            )
        return Timeline(account_id, status.value, entries)

    def chain_head(self) -> ChainHead:
        position, link = HashChain(self.accounts.database).head()
        head = self.accounts.recorder.max_notification_id() or 0
        return ChainHead(position, link, head, max(0, head - position))


def timeline_facts(event: Any) -> dict[str, Any]:
    match event:
        case Account.Registered():
            return {"channel": event.channel, "consent_version": event.consent_version}
        case Account.PreferencesEdited():
            return {"changed_parts": event.changed_parts}
        case Account.ScoutReceived():
            return {
                "scout_id": event.scout_id,
                "company_id": event.company_id,
                "job_id": event.job_id,
            }
        case Account.GiftClaimed():
            return {
                "company_id": event.company_id,
                "start_date": event.start_date,
                "gift_kind": event.gift_kind,
                "amount_jpy": event.amount_jpy,
            }
        case Account.WithdrawalRequested():
            return {
                "reason": event.reason,
                "gift_forfeited": event.gift_forfeited,
                "acknowledged_gift_loss": event.acknowledged_gift_loss,
                "comment_given": event.comment is not None,
            }
    return {}
