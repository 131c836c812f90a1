"""The errors the application raises to its callers on purpose: the `LifecycleError` hierarchy,
each with a stable `code`, which the HTTP edge maps to a status.

Subclasses live where their layer is: the HTTP edge's own (authentication, permission,
readiness) in `lifecycle/api/problems.py`, `MasterKeyError` (bad key configuration, at start-up)
in `lifecycle/crypto.py`. Infrastructure and the consumer kit import no core module, so they
raise plain exceptions of their own (`PublishError`, `KeyringError`, `TransientError`, ...),
which the application and the entrypoints translate before a caller sees them.
"""

from __future__ import annotations


class LifecycleError(Exception):
    """Base of every error the service raises on purpose; `code` is stable for clients."""

    code = "lifecycle_error"

    def __init__(self, code: str | None = None, detail: str | None = None) -> None:
        self.code = code or type(self).code
        self.detail = detail or self.code.replace("_", " ")
        super().__init__(self.code)


class InvalidCommandError(LifecycleError):
    code = "invalid_command"


class NotFoundError(LifecycleError):
    """What was asked for does not exist (404)."""

    code = "not_found"


class AccountNotFoundError(NotFoundError):
    code = "account_not_found"


class PermissionDeniedError(LifecycleError):
    """The caller's role may not do this (403)."""

    code = "forbidden"


class GoneError(LifecycleError):
    """Something that existed is erased for good (410)."""

    code = "gone"


class AccountPurgedError(GoneError):
    code = "account_purged"


class DeadLetterSourceGoneError(GoneError):
    """The record a dead letter refers to is erased (compacted, past retention) or belongs
    to an erased account; `reason` says which."""

    code = "dead_letter_source_gone"


class ConflictError(LifecycleError):
    code = "conflict"


class AccountWithdrawingError(ConflictError):
    code = "account_withdrawing"


class AccountNotWithdrawingError(ConflictError):
    code = "account_not_withdrawing"


class EmailAlreadyClaimedError(ConflictError):
    code = "email_in_use"


class GiftAlreadyClaimedError(ConflictError):
    code = "gift_already_claimed"


class GiftUnclaimedError(ConflictError):
    code = "gift_unclaimed"


class ConcurrentUpdateError(ConflictError):
    code = "concurrent_update"


class GiftNotEligibleError(LifecycleError):
    code = "gift_not_eligible"


class KeyDestroyedError(LifecycleError):
    """A data key was destroyed; nothing may create or restore it again."""

    code = "key_destroyed"


class StartupError(LifecycleError):
    """Configuration or a dependency is unusable; the CLI prints one line and exits."""

    code = "startup_failed"
