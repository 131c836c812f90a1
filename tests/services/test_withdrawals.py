"""The member's withdrawal at the service layer: it cancels the member's live data exports (one
call, whichever entrypoint), a refused withdrawal cancels nothing, and a repeat completes a
cancel that a crash between the two steps left undone."""

from __future__ import annotations

import uuid
from uuid import UUID

import pytest

from lifecycle.application import Accounts
from lifecycle.data_export.service import DataExports
from lifecycle.data_export_aggregate import ExportStatus
from lifecycle.domain import AccountStatus
from lifecycle.errors import GiftUnclaimedError
from lifecycle.services.withdrawals import Withdrawal, Withdrawals


def member(accounts: Accounts) -> UUID:
    return accounts.register(
        email=f"w-{uuid.uuid4().hex[:8]}@withdraw.example", display_name="Aoi", consent_version="v1"
    )


def stored_status(exports: DataExports, export_id: UUID) -> ExportStatus:
    """As stored: `load` does not settle the export the way a member's read would."""
    return exports.load(export_id).status


def test_withdrawal_cancels_the_members_live_exports(accounts: Accounts) -> None:
    exports = DataExports(accounts)
    account_id, other = member(accounts), member(accounts)
    export_id = exports.request(account_id).export.id
    others = exports.request(other).export.id

    outcome = Withdrawals(accounts, exports).request(account_id, reason="hired_elsewhere")

    assert outcome == Withdrawal(recorded=True, exports_cancelled=1)
    assert stored_status(exports, export_id) is ExportStatus.CANCELLED
    assert exports.keys.private_key(export_id) is None
    # Another member's export is not touched.
    assert stored_status(exports, others) is ExportStatus.REQUESTED
    assert exports.keys.private_key(others) is not None


def test_a_refused_withdrawal_cancels_nothing(accounts: Accounts) -> None:
    exports = DataExports(accounts)
    account_id = member(accounts)
    accounts.receive_scout(account_id, scout_id="s-1", company_id="c-1", job_id="j-1")
    export_id = exports.request(account_id).export.id

    with pytest.raises(GiftUnclaimedError):
        Withdrawals(accounts, exports).request(account_id, reason="hired_via_platform")

    assert accounts.get_account(account_id).status is AccountStatus.ACTIVE
    assert stored_status(exports, export_id) is ExportStatus.REQUESTED
    assert exports.keys.private_key(export_id) is not None


def test_a_repeat_records_nothing_and_cancels_nothing_more(accounts: Accounts) -> None:
    exports = DataExports(accounts)
    account_id = member(accounts)
    export_id = exports.request(account_id).export.id
    withdrawals = Withdrawals(accounts, exports)
    withdrawals.request(account_id, reason="hired_elsewhere")
    version = exports.load(export_id).version

    again = withdrawals.request(account_id, reason="hired_elsewhere")

    assert again == Withdrawal(recorded=False, exports_cancelled=0)
    assert exports.load(export_id).version == version  # no second end recorded


def test_a_repeat_completes_a_cancel_a_crash_left_undone(accounts: Accounts) -> None:
    exports = DataExports(accounts)
    account_id = member(accounts)
    export_id = exports.request(account_id).export.id
    # The first attempt stopped after the withdrawal was recorded, before the cancel.
    accounts.request_withdrawal(account_id, reason="hired_elsewhere")
    assert stored_status(exports, export_id) is ExportStatus.REQUESTED

    again = Withdrawals(accounts, exports).request(account_id, reason="hired_elsewhere")

    assert again == Withdrawal(recorded=False, exports_cancelled=1)
    assert stored_status(exports, export_id) is ExportStatus.CANCELLED
