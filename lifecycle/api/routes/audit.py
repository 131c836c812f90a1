"""Audit (role `auditor`): an account's raw event stream, and the hash chain's head.

Personal fields come back as `[redacted]` unless the caller asks for them decrypted
(`?personal=decrypted`) and the caller's role is listed in `LIFECYCLE_AUDIT_DECRYPT_ROLES`
(empty by default: nobody). Every decrypted read is recorded before the values leave, in the
table `personal_data_reads` (time, account id, role, request id, how many events) and in the
log as `audit.personal_values_read`; never the values themselves. After purge the key is
gone, so even a permitted caller gets `[redacted]`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from lifecycle.api.auth import AuditorCaller, require_role
from lifecycle.api.deps import AccountId, AccountsDep, get_settings
from lifecycle.api.problems import PermissionDeniedError, problem_responses, request_id_of
from lifecycle.api.tables import PersonalDataReads
from lifecycle.domain import REDACTED, Account
from lifecycle.errors import AccountNotFoundError
from lifecycle.logs import get_logger
from projections.hashchain import HashChain

log = get_logger(__name__)

router = APIRouter(
    prefix="/audit/v1",
    tags=["audit"],
    dependencies=[Depends(require_role("auditor"))],
    responses=problem_responses(401, 403),
)

# Attributes every event has, shown as fields of their own rather than in `data`.
ENVELOPE = ("originator_id", "originator_version", "timestamp", "originator_topic")


class AuditEvent(BaseModel):
    version: int
    topic: str
    event: str
    timestamp: datetime
    personal_fields: list[str] = Field(description="Names of the fields sealed in this event.")
    data: dict[str, Any] = Field(
        description="The event's attributes; personal fields decrypted or `[redacted]`."
    )


class AuditStream(BaseModel):
    account_id: UUID
    personal: Literal["redacted", "decrypted"]
    key_destroyed: bool
    events: list[AuditEvent]


class ChainHead(BaseModel):
    position: int = Field(description="Last notification id the chain covers.")
    link: str = Field(description="SHA-256 link at that position (hex); keep a copy elsewhere.")
    log_head: int
    lag: int


@router.get(
    "/accounts/{account_id}/events",
    operation_id="listAccountEvents",
    summary="An account's events as stored: versions, times, topics, every attribute",
    responses=problem_responses(404),
)
def account_events(
    account_id: AccountId,
    accounts: AccountsDep,
    caller: AuditorCaller,
    request: Request,
    personal: Annotated[
        Literal["redacted", "decrypted"],
        Query(description="`decrypted` needs a role in LIFECYCLE_AUDIT_DECRYPT_ROLES."),
    ] = "redacted",
) -> AuditStream:
    from projections.base import facts_mapper

    settings = get_settings(request)
    decrypt = personal == "decrypted"
    if decrypt and caller.role not in settings.audit_decrypt_roles:
        raise PermissionDeniedError(detail="this role may not read personal values")
    stored = accounts.recorder.select_events(account_id)
    facts = facts_mapper(accounts.mapper)
    redacted = [facts.to_domain_event(event) for event in stored]
    if not redacted or not isinstance(redacted[0], Account.Registered):
        raise AccountNotFoundError()
    key_destroyed = accounts.vault.is_destroyed(account_id)
    shown: list[Any] = redacted
    if decrypt:
        request_id = request_id_of(request)
        # Recorded first: if this cannot be written, no value leaves.
        PersonalDataReads(accounts.database).record(
            account_id, caller.role, request_id, len(stored)
        )
        log.info(
            "audit.personal_values_read",
            account_id=str(account_id),
            role=caller.role,
            request_id=request_id,
            events=len(stored),
            key_destroyed=key_destroyed,
        )
        shown = [accounts.mapper.to_domain_event(event) for event in stored]
    events = []
    for raw, fact, event in zip(stored, redacted, shown, strict=True):
        sealed = [
            name
            for name in getattr(type(fact), "personal_fields", ())
            if getattr(fact, name, None) == REDACTED
        ]
        events.append(
            AuditEvent(
                version=event.originator_version,
                topic=raw.topic,
                event=type(event).__qualname__,
                timestamp=event.timestamp,
                personal_fields=sealed,
                data={k: v for k, v in vars(event).items() if k not in ENVELOPE},
            )
        )
    return AuditStream(
        account_id=account_id,
        personal="decrypted" if decrypt and not key_destroyed else "redacted",
        key_destroyed=key_destroyed,
        events=events,
    )


@router.get(
    "/hash-chain",
    operation_id="getHashChainHead",
    summary="The tamper-evidence chain's head and how far behind it is",
)
def hash_chain(accounts: AccountsDep) -> ChainHead:
    position, link = HashChain(accounts.database).head()
    head = accounts.recorder.max_notification_id() or 0
    return ChainHead(position=position, link=link, log_head=head, lag=max(0, head - position))
