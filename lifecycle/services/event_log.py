"""The whole event log, for auditors (`lifecycle audit export|replay|verify`): export it as
stored, replay it against the domain's rules, recompute its hash chain. The tools are in
`lifecycle.audit` (export, replay, verify); this says what a caller may ask and what comes back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from lifecycle.application import Accounts
from lifecycle.audit.export import export_log, parse_bound
from lifecycle.audit.forked import PartFailedError
from lifecycle.audit.replay import replay
from lifecycle.audit.replay_report import ReplayReport
from lifecycle.audit.verify import Verification, verify
from lifecycle.errors import InvalidCommandError, ReplayFailedError
from lifecycle.settings import Settings
from projections.hashchain import HashChain

Progress = Callable[[int, int], None]
# A pass over the log reads on one connection at a time (a replay's forked workers open their
# own): the application a replay or export opens needs no more, and fills its pool faster.
ONE_PASS_POOL_SIZE = 2


def one_pass(settings: Settings) -> Settings:
    """The settings for an application opened for one pass over the log."""
    size = min(settings.database_pool_size, ONE_PASS_POOL_SIZE)
    return settings.model_copy(update={"database_pool_size": size})


class EventLog:
    def __init__(self, accounts: Accounts, progress: Progress | None = None) -> None:
        self.accounts = accounts
        self.progress = progress

    def export(self, out: TextIO, since: str | None = None, until: str | None = None) -> int:
        """Every stored event from `since` to `until` (notification ids, both inclusive, or
        ISO 8601 times, from inclusive to exclusive, JST without an offset) as JSON Lines,
        personal fields sealed as stored; how many were written."""
        try:
            bounds = [None if text is None else parse_bound(text) for text in (since, until)]
        except ValueError as error:
            raise InvalidCommandError("bad_bound", detail=str(error)) from None
        return export_log(
            self.accounts, out, since=bounds[0], until=bounds[1], progress=self.progress
        )

    def replay(self, workers: int | None = None) -> ReplayReport:
        """Every aggregate rebuilt from the log, every rule of the domain checked, by
        `workers` processes side by side (None: one per core, for a log long enough)."""
        if workers is not None and workers < 1:
            raise InvalidCommandError("bad_workers", detail="workers must be at least 1")
        try:
            return replay(self.accounts, progress=self.progress, workers=workers)
        except PartFailedError as error:
            raise ReplayFailedError(detail=f"replay failed: {error}") from None

    def verify(self) -> Verification:
        """Every link of the hash chain recomputed from the stored events."""
        chain = HashChain(self.accounts.database)  # its tables come from migrations
        total = self.accounts.recorder.max_notification_id() or 0
        progress = self.progress
        return verify(
            chain,
            self.accounts.recorder,
            progress=None if progress is None else (lambda done: progress(done, total)),
        )
