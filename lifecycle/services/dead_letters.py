"""Dead letters for ops: list, re-drive, discard.

A dead letter refers to its source record and carries no copy of it (`consumers.faults`):
re-drive reads the original at its source offset and publishes it again, unchanged. When the
source topic's compaction or retention erased it, or the account is purged (or, for a profile
record, withdrawing; or superseded by a later profile record of the account), re-drive is
refused with `DeadLetterSourceGoneError` (`code` says which): the member's values are gone, as
promised, and nothing brings them back. Discard only hides the reference. Each action is
recorded once (`DeadLetterActions`), so a second re-drive of one letter is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from uuid import UUID

from lifecycle.account_terms import AccountStatus
from lifecycle.application import Accounts
from lifecycle.errors import (
    AccountNotFoundError,
    ConflictError,
    DeadLetterSourceGoneError,
    InvalidCommandError,
    NotFoundError,
)
from lifecycle.kafka.inspector import DeadLetter, KafkaInspector, SourceRecord
from lifecycle.logs import get_logger
from lifecycle.publishing import republication
from lifecycle.services.actions import Actor, DeadLetterActions
from schemas.contract import CONSUMER_GROUPS

log = get_logger(__name__)

Action = Literal["redriven", "discarded"]


@dataclass(frozen=True)
class Handled:
    group: str
    partition: int
    offset: int
    action: Action
    republished_to: str | None


class DeadLetters:
    def __init__(self, accounts: Accounts, kafka: KafkaInspector) -> None:
        self.accounts = accounts
        self.kafka = kafka
        self.actions = DeadLetterActions(accounts.database)

    def waiting(self, group: str, limit: int) -> list[DeadLetter]:
        """The group's dead letters neither re-driven nor discarded."""
        known_group(group)
        handled = self.actions.done(self.kafka.topics.dlq(group))
        return self.kafka.dead_letters(group, limit, handled)

    def redrive(self, group: str, partition: int, offset: int, actor: Actor) -> Handled:
        return self._handle(group, partition, offset, "redriven", actor)

    def discard(self, group: str, partition: int, offset: int, actor: Actor) -> Handled:
        return self._handle(group, partition, offset, "discarded", actor)

    def _handle(
        self, group: str, partition: int, offset: int, action: Action, actor: Actor
    ) -> Handled:
        known_group(group)
        letter = self.kafka.dead_letter(group, partition, offset)
        if letter is None:
            raise NotFoundError(detail="no such dead letter")
        original: SourceRecord | None = None
        if action == "redriven":
            original = self.source_to_redrive(letter)
        if not self.actions.claim(letter.topic, partition, offset, action):
            raise ConflictError(
                "dead_letter_handled", detail="this dead letter was already handled"
            )
        if original is not None:
            record = republication(original)
            try:
                self.kafka.publish(original.topic, record.key, record.headers, record.value)
            except BaseException:
                self.actions.release(letter.topic, partition, offset)
                raise
        log.info(
            "dead_letter." + action,
            group=group,
            partition=partition,
            offset=offset,
            ce_id=letter.header("ce_id"),
            role=actor.role,
            request_id=actor.request_id,
        )
        return Handled(
            group, partition, offset, action, original.topic if original is not None else None
        )

    def source_to_redrive(self, letter: DeadLetter) -> SourceRecord:
        """The original record, read at its source offset, when it may be published again.

        A dead letter's headers are only a claim (anyone who could write the topic could forge
        one): the source must be one of the group's own input topics, the record there must
        carry the `ce_id` the letter names, and the account is the one the original names."""
        source = letter.source()
        if source is None:
            raise InvalidCommandError(
                "no_source_record", detail="the dead letter names no source record"
            )
        topic, partition, offset = source
        topics = self.kafka.topics
        if topic not in topics.inputs_of(letter.group):
            raise ConflictError(
                "dead_letter_source_refused",
                detail="the dead letter names a source that is not one of its group's inputs",
            )
        ce_id = letter.header("ce_id")
        if ce_id is None:
            raise ConflictError(
                "dead_letter_source_refused",
                detail="the dead letter names no ce_id to check its source record against",
            )
        original = self.kafka.source_record(topic, partition, offset)
        if original is None:
            raise DeadLetterSourceGoneError(
                "source_record_erased",
                detail="the source record is gone (compaction or retention erased it)",
            )
        if original.header("ce_id") != ce_id:
            raise DeadLetterSourceGoneError(
                "source_record_erased", detail="the source offset holds another record"
            )
        status = self._account_status(original)
        if status is AccountStatus.PURGED:
            raise DeadLetterSourceGoneError(
                "account_purged", detail="the account is purged: its records are not re-driven"
            )
        if topic == topics.profile:
            if status not in (None, AccountStatus.ACTIVE):
                # Published after the purge's tombstone, contact data would outlive compaction.
                raise DeadLetterSourceGoneError(
                    "account_withdrawing",
                    detail="the account is withdrawing: its contact data is not published again",
                )
            if self.kafka.superseded(original):
                # Published again, the older contact data would become the key's latest.
                raise DeadLetterSourceGoneError(
                    "source_record_superseded",
                    detail="a later profile record of the account replaced this one",
                )
        return original

    def _account_status(self, original: SourceRecord) -> AccountStatus | None:
        """The status of the account the original record names (its key or `ce_subject`),
        never what the dead letter says; None when it names none the service knows."""
        key = (original.key or b"").decode(errors="replace")
        for text in (original.header("ce_subject"), key):
            try:
                account_id = UUID(text or "")
            except ValueError:
                continue
            try:
                return self.accounts.load_for_audit(account_id).status
            except AccountNotFoundError:
                return None
        return None


def known_group(group: str) -> str:
    if group not in CONSUMER_GROUPS:
        raise InvalidCommandError(
            "unknown_consumer_group", detail=f"expected one of {', '.join(CONSUMER_GROUPS)}"
        )
    return group
