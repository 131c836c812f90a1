"""Read models for ops (`/admin/v1/projections`, `lifecycle project`): each one's position and
lag behind the notification log, the position of a rebuild in progress (its shadow tables); a
catch-up to the log's head, and a rebuild from position 0."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from lifecycle.application import Accounts
from lifecycle.errors import InvalidCommandError
from projections.base import SHADOW_SUFFIX, ReadModel
from projections.registry import UnknownReadModelError, open_read_models, read_model_classes
from projections.runner import ProgressSink, Projector, RebuildResult, rebuild


@dataclass(frozen=True)
class ReadModelState:
    name: str
    position: int
    lag: int
    rebuilding_position: int | None


@dataclass(frozen=True)
class ReadModelStates:
    head: int
    read_models: list[ReadModelState]


class ReadModels:
    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts

    def live(self) -> dict[str, ReadModel]:
        """Every read model over the service's database, by name (building one does no I/O)."""
        return {cls.name: cls(self.accounts.database) for cls in read_model_classes()}

    def log_head(self) -> int:
        """The notification log's last id (0 when empty)."""
        return self.accounts.recorder.max_notification_id() or 0

    def states(self) -> ReadModelStates:
        head = self.log_head()
        states = []
        database = self.accounts.database
        for model_class in read_model_classes():
            model = model_class(database)
            position = model.position() if model.exists() else 0
            shadow = model_class(database, suffix=SHADOW_SUFFIX)
            states.append(
                ReadModelState(
                    name=model_class.name,
                    position=position,
                    lag=max(0, head - position),
                    rebuilding_position=shadow.position() if shadow.exists() else None,
                )
            )
        return ReadModelStates(head, states)

    def opened(self, names: Iterable[str] = ()) -> list[ReadModel]:
        """The named read models (all by default), their tables created when missing."""
        _known(names)
        return open_read_models(self.accounts.database, names)

    def catch_up(
        self,
        names: Iterable[str] = (),
        *,
        batch_size: int = 500,
        progress: ProgressSink | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """Each named read model (all by default) brought to the log's head, one after another."""
        for model in self.opened(names):
            Projector(self.accounts, model, batch_size=batch_size, progress=progress).catch_up(stop)

    def rebuild(
        self,
        names: Iterable[str] = (),
        *,
        batch_size: int = 500,
        progress: ProgressSink | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[RebuildResult]:
        """Each named read model (all by default) replayed from position 0 into shadow tables,
        then swapped in; a result as each is done."""
        for model_class in _known(names):
            yield rebuild(
                self.accounts, model_class, batch_size=batch_size, progress=progress, stop=stop
            )


def _known(names: Iterable[str]) -> list[type[ReadModel]]:
    try:
        return read_model_classes(names)
    except UnknownReadModelError as error:
        raise InvalidCommandError("unknown_read_model", detail=str(error)) from None
