"""A member's withdrawal: the one use case every entrypoint calls to withdraw an account.

The withdrawal is recorded first; then the member's live data exports are cancelled, so ops'
export list shows them ended at once rather than at the next read or sweep (the store's trigger
already destroyed their keys and sealed parts in the withdrawal's transaction). A refused
withdrawal (unknown reason, gift loss not acknowledged, a purged account) raises before
anything is cancelled. A repeat records nothing and sweeps again: a retry after a crash between
the two steps completes the cancel.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from lifecycle.application import Accounts
from lifecycle.data_export.service import DataExports


@dataclass(frozen=True)
class Withdrawal:
    recorded: bool  # False: already requested, nothing new recorded
    exports_cancelled: int


class Withdrawals:
    def __init__(self, accounts: Accounts, exports: DataExports) -> None:
        self.accounts = accounts
        self.exports = exports

    def request(
        self,
        account_id: UUID,
        *,
        reason: str,
        reason_details: list[str] | None = None,
        comment: str | None = None,
        acknowledge_gift_loss: bool = False,
    ) -> Withdrawal:
        recorded = self.accounts.request_withdrawal(
            account_id,
            reason=reason,
            reason_details=reason_details,
            comment=comment,
            acknowledge_gift_loss=acknowledge_gift_loss,
        )
        return Withdrawal(recorded, self.exports.cancel_all(account_id))
