"""The errors the service raises to its callers on purpose: the `LifecycleError` hierarchy,
each with a stable `code`, which the HTTP edge maps to a status (`lifecycle/api/problems.py`)
and the CLI prints.

Every subclass lives here but one: `AuthenticationError`, which carries the HTTP challenge
header, stays at the HTTP edge (`lifecycle/api/problems.py`). Infrastructure and the consumer
kit import no core module, so they raise plain exceptions of their own (`PublishError`,
`KeyringError`, `BrokerUnavailableError`, `TransientError`, ...), which the application and
the entrypoints translate before a caller sees them.
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


class MasterKeyError(LifecycleError):
    """The configured master key is unusable (at start-up)."""

    code = "master_key_invalid"


class ChainMismatchError(LifecycleError):
    """A rebuilt chain differs from the live one: stored events changed since they were chained."""

    code = "hash_chain_mismatch"


class ReplayFailedError(LifecycleError):
    """A part of a pass over the log, run in a process of its own, failed (its error named)."""

    code = "replay_failed"


class NotReadyError(LifecycleError):
    """The service cannot serve requests yet (or any more): its database does not answer."""

    code = "not_ready"


class KafkaUnavailableError(NotReadyError):
    """Kafka is needed for this request and does not answer (or is not configured)."""

    code = "kafka_unavailable"


class StartupError(LifecycleError):
    """Configuration or a dependency is unusable; the CLI prints one line and exits."""

    code = "startup_failed"
