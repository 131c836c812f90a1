"""Audit (role `auditor`): an account's raw event stream, and the hash chain's head.

Personal fields come back as `[redacted]` unless the caller asks for them decrypted
(`?personal=decrypted`); who may, and the record of every such read, are the service's rules
(`lifecycle.services.audit`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from lifecycle.api.auth import require_role
from lifecycle.api.deps import AccountId, AuditorActor, AuditReadsDep
from lifecycle.api.problems import problem_responses
from lifecycle.services.audit import StoredFact

router = APIRouter(
    prefix="/audit/v1",
    tags=["audit"],
    dependencies=[Depends(require_role("auditor"))],
    responses=problem_responses(401, 403),
)


class AuditEvent(BaseModel):
    version: int
    event_type: str = Field(
        description="The stored event type's name, as the event log holds it "
        "(lifecycle/event_names.py)."
    )
    topic: str = Field(
        deprecated=True,
        description="The same as `event_type` (its name in earlier releases; not a Kafka "
        "topic); to be removed in a later release.",
    )
    event: str
    timestamp: datetime
    personal_fields: list[str] = Field(description="Names of the fields sealed in this event.")
    data: dict[str, Any] = Field(
        description="The event's attributes; personal fields decrypted or `[redacted]`."
    )

    @classmethod
    def of(cls, fact: StoredFact) -> AuditEvent:
        return cls(
            version=fact.version,
            event_type=fact.stored_name,
            topic=fact.stored_name,
            event=fact.event,
            timestamp=fact.timestamp,
            personal_fields=list(fact.personal_fields),
            data=fact.data,
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
    summary="An account's events as stored: versions, times, types, every attribute",
    responses=problem_responses(404),
)
def account_events(
    account_id: AccountId,
    audit: AuditReadsDep,
    reader: AuditorActor,
    personal: Annotated[
        Literal["redacted", "decrypted"],
        Query(description="`decrypted` needs a role in LIFECYCLE_AUDIT_DECRYPT_ROLES."),
    ] = "redacted",
) -> AuditStream:
    stream = audit.events(account_id, reader, decrypted=personal == "decrypted")
    return AuditStream(
        account_id=stream.account_id,
        personal=stream.personal,
        key_destroyed=stream.key_destroyed,
        events=[AuditEvent.of(fact) for fact in stream.events],
    )


@router.get(
    "/hash-chain",
    operation_id="getHashChainHead",
    summary="The tamper-evidence chain's head and how far behind it is",
)
def hash_chain(audit: AuditReadsDep) -> ChainHead:
    return ChainHead.model_validate(audit.chain_head(), from_attributes=True)
