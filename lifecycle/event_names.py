"""The stored name of every aggregate and event type: one definition, imported everywhere.

Each name is what a stored event's `topic` column holds, and what the shredding trigger,
the audit replay, the erasure receipt, the read models and the relay key on. The strings are
frozen at what the first release wrote (then the classes' import paths), so existing databases
need no rewrite; the domain's classes declare them as `TOPIC`, which the library writes and
resolves whatever a class is called or wherever it lives. Rename or move a class freely; never
change a string here (stored events would no longer resolve, and the trigger keyed on a
`Purged` name would stop firing). A new type gets a new name of its own.
"""

from typing import Final

ACCOUNT: Final = "lifecycle.domain:Account"
REGISTERED: Final = "lifecycle.domain:Account.Registered"
PREFERENCES_EDITED: Final = "lifecycle.domain:Account.PreferencesEdited"
SCOUT_RECEIVED: Final = "lifecycle.domain:Account.ScoutReceived"
GIFT_CLAIMED: Final = "lifecycle.domain:Account.GiftClaimed"
WITHDRAWAL_REQUESTED: Final = "lifecycle.domain:Account.WithdrawalRequested"
PURGED: Final = "lifecycle.domain:Account.Purged"
# The library defines a `Created` event on every aggregate; Account never records it.
ACCOUNT_CREATED_UNUSED: Final = "lifecycle.domain:Account.Created"

EMAIL_CLAIM: Final = "lifecycle.domain:EmailClaim"
EMAIL_CLAIM_CREATED: Final = "lifecycle.domain:EmailClaim.Created"
EMAIL_CLAIMED: Final = "lifecycle.domain:EmailClaim.Claimed"
EMAIL_RELEASED: Final = "lifecycle.domain:EmailClaim.Released"

# The data export (lifecycle.data_export_aggregate): its own aggregate, beside the accounts.
DATA_EXPORT: Final = "lifecycle.data_export:DataExport"
DATA_EXPORT_CREATED_UNUSED: Final = "lifecycle.data_export:DataExport.Created"
DATA_EXPORT_REQUESTED: Final = "lifecycle.data_export:DataExport.Requested"
DATA_EXPORT_PART_RECEIVED: Final = "lifecycle.data_export:DataExport.PartReceived"
DATA_EXPORT_PART_FAILED: Final = "lifecycle.data_export:DataExport.PartFailed"
DATA_EXPORT_RETRY_REQUESTED: Final = "lifecycle.data_export:DataExport.RetryRequested"
DATA_EXPORT_READIED: Final = "lifecycle.data_export:DataExport.Readied"
DATA_EXPORT_ENDED: Final = "lifecycle.data_export:DataExport.Ended"

# Every Account event's stored name, in the order of the lifecycle.
ACCOUNT_EVENTS: Final = (
    REGISTERED,
    PREFERENCES_EDITED,
    SCOUT_RECEIVED,
    GIFT_CLAIMED,
    WITHDRAWAL_REQUESTED,
    PURGED,
)
