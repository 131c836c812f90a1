"""The account's vocabulary: statuses, withdrawal reasons and their details, channels, the
gift's terms, the parts a member edits, and how addresses and notifications default. Pure,
imported by the Account aggregate (`lifecycle.domain`) and by whoever speaks of accounts."""

from __future__ import annotations

from enum import StrEnum

from lifecycle import addresses

REDACTED = "[redacted]"  # what a personal value that no key opens any more reads back as

GIFT_KIND = "gift_card"
GIFT_AMOUNT_JPY = 5000
MAX_COMMENT_LENGTH = 1000


class AccountStatus(StrEnum):
    ACTIVE = "active"
    WITHDRAWING = "withdrawing"
    PURGED = "purged"


class WithdrawalReason(StrEnum):
    HIRED_VIA_PLATFORM = "hired_via_platform"
    HIRED_ELSEWHERE = "hired_elsewhere"
    TOO_MANY_NOTIFICATIONS = "too_many_notifications"
    POSTINGS_MISMATCH = "postings_mismatch"
    HARD_TO_USE = "hard_to_use"
    OTHER = "other"


# What a member may add to a reason, as codes (never free text): which of the reason's parts
# weighed. Version 2 of WithdrawalRequested records them; version-1 events read as none given.
WITHDRAWAL_REASON_DETAILS: dict[str, tuple[str, ...]] = {
    WithdrawalReason.HIRED_VIA_PLATFORM: (),
    WithdrawalReason.HIRED_ELSEWHERE: ("agent", "direct_application", "referral", "other_platform"),
    WithdrawalReason.TOO_MANY_NOTIFICATIONS: ("scouts", "recommendations", "notices"),
    WithdrawalReason.POSTINGS_MISMATCH: ("location", "salary", "job_type", "industry", "seniority"),
    WithdrawalReason.HARD_TO_USE: ("app", "web", "search", "messaging"),
    WithdrawalReason.OTHER: (),
}


class Channel(StrEnum):
    WEB = "web"
    APP = "app"


# Parts of the account a member may edit; each maps to a field of PreferencesEdited.
EDITABLE_PARTS = ("profile", "job_title", "work_history", "desired", "notifications")
# Parts edited field by field rather than replaced whole.
MERGED_PARTS = ("profile", "desired", "notifications")


def normalise_email(email: str) -> str:
    """Compare addresses as people mean them: NFKC, trimmed, case-folded."""
    return addresses.normalised(email)


def default_notifications() -> dict[str, bool]:
    return {"scouts": True, "recommendations": True, "notices": True}
