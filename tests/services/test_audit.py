"""Audit reads at the service layer: redacted by default; decrypted only for a permitted role,
and only after the read is recorded; never a value after purge; timelines hold none."""

from __future__ import annotations

import uuid
from uuid import UUID

import pytest
from structlog.testing import capture_logs

from lifecycle.application import Accounts
from lifecycle.errors import AccountNotFoundError, PermissionDeniedError
from lifecycle.services.actions import Actor
from lifecycle.services.audit import AuditReads
from lifecycle.services.read_models import ReadModels
from projections.registry import read_model_classes

NAME = "Tsubasa Quillfeather"
AUDITOR = Actor("auditor", "audit-1")
COMPLIANCE = Actor("compliance", "audit-2")


@pytest.fixture
def account_id(accounts: Accounts) -> UUID:
    account_id = accounts.register(
        email=f"a-{uuid.uuid4().hex[:8]}@audit.example", display_name=NAME, consent_version="v1"
    )
    accounts.request_withdrawal(account_id, reason="other", comment="moving to Osaka")
    return account_id


def test_a_redacted_read_shows_facts_and_records_nothing(
    accounts: Accounts, account_id: UUID
) -> None:
    audit = AuditReads(accounts, decrypt_roles=["compliance"])
    stream = audit.events(account_id, AUDITOR)
    assert (stream.personal, stream.key_destroyed) == ("redacted", False)
    assert [e.event for e in stream.events] == ["Account.Registered", "Account.WithdrawalRequested"]
    assert stream.events[0].data["display_name"] == "[redacted]"
    assert "display_name" in stream.events[0].personal_fields
    assert audit.reads.of(account_id) == []


def test_decrypting_is_refused_to_a_role_not_listed_and_nothing_is_recorded(
    accounts: Accounts, account_id: UUID
) -> None:
    audit = AuditReads(accounts, decrypt_roles=["compliance"])
    with pytest.raises(PermissionDeniedError):
        audit.events(account_id, AUDITOR, decrypted=True)
    assert audit.reads.of(account_id) == []


def test_a_decrypted_read_is_recorded_before_any_value_leaves(
    accounts: Accounts, account_id: UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = AuditReads(accounts, decrypt_roles=["compliance"])
    with capture_logs() as logs:
        stream = audit.events(account_id, COMPLIANCE, decrypted=True)
    assert stream.personal == "decrypted"
    assert stream.events[0].data["display_name"] == NAME
    assert audit.reads.of(account_id) == [("compliance", "audit-2", 2)]
    [read] = [e for e in logs if e["event"] == "audit.personal_values_read"]
    assert (read["role"], read["request_id"]) == ("compliance", "audit-2")
    assert NAME not in repr(logs)

    def unrecordable(*_: object) -> None:
        raise RuntimeError("database down")

    monkeypatch.setattr(audit.reads, "record", unrecordable)
    with pytest.raises(RuntimeError):
        audit.events(account_id, COMPLIANCE, decrypted=True)


def test_after_purge_a_permitted_read_is_redacted_and_unknown_accounts_are_not_found(
    accounts: Accounts, account_id: UUID
) -> None:
    accounts.purge(account_id)
    audit = AuditReads(accounts, decrypt_roles=["compliance"])
    stream = audit.events(account_id, COMPLIANCE, decrypted=True)
    assert (stream.personal, stream.key_destroyed) == ("redacted", True)
    assert stream.events[0].data["display_name"] == "[redacted]"
    with pytest.raises(AccountNotFoundError):
        audit.events(uuid.uuid4(), AUDITOR)


def test_the_timeline_holds_facts_only(accounts: Accounts, account_id: UUID) -> None:
    timeline = AuditReads(accounts).timeline(account_id)
    assert timeline.status == "withdrawing"
    assert [e.event for e in timeline.events] == ["Registered", "WithdrawalRequested"]
    assert timeline.events[1].facts == {
        "reason": "other",
        "gift_forfeited": False,
        "acknowledged_gift_loss": False,
        "comment_given": True,
    }
    assert NAME not in repr(timeline) and "Osaka" not in repr(timeline)
    with pytest.raises(AccountNotFoundError):
        AuditReads(accounts).timeline(uuid.uuid4())


def test_the_chain_head_and_read_models_report_their_lag(
    accounts: Accounts, account_id: UUID
) -> None:
    head = AuditReads(accounts).chain_head()
    assert head.log_head >= 2 and head.lag == head.log_head - head.position
    states = ReadModels(accounts).states()
    assert states.head == head.log_head
    assert [s.name for s in states.read_models] == [cls.name for cls in read_model_classes()]
    assert all(s.lag == states.head - s.position for s in states.read_models)
