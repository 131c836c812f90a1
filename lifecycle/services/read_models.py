"""Read models for ops: each one's position and lag behind the notification log, and the
position of a rebuild in progress (its shadow tables)."""

from __future__ import annotations

from dataclasses import dataclass

from lifecycle.application import Accounts
from projections.base import SHADOW_SUFFIX, ReadModel
from projections.registry import read_model_classes


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
