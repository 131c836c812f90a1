"""Every read model by name, and opening them.

Code imports from here (or the read model's own module), never from the package itself:
a test directory named `projections` would otherwise shadow the package's `__init__`.
"""

from __future__ import annotations

from collections.abc import Iterable

from lifecycle.storage import Database
from projections.base import ReadModel
from projections.directory import AccountDirectory
from projections.erasure import ErasureStatusView
from projections.hashchain import HashChain
from projections.statistics import GiftClaims, ScoutsPerCompany, WithdrawalReasons

READ_MODELS: dict[str, type[ReadModel]] = {
    model.name: model
    for model in (
        AccountDirectory,
        ErasureStatusView,
        WithdrawalReasons,
        GiftClaims,
        ScoutsPerCompany,
        HashChain,
    )
}


class UnknownReadModelError(ValueError):
    pass


def read_model_classes(names: Iterable[str] = ()) -> list[type[ReadModel]]:
    """The named read models (all when none are named); raises for an unknown name."""
    wanted = list(names) or list(READ_MODELS)
    unknown = [name for name in wanted if name not in READ_MODELS]
    if unknown:
        raise UnknownReadModelError(
            f"unknown projection {', '.join(unknown)}: expected {', '.join(READ_MODELS)}"
        )
    return [READ_MODELS[name] for name in dict.fromkeys(wanted)]


def open_read_models(database: Database, names: Iterable[str] = ()) -> list[ReadModel]:
    """Live read models, their tables created when missing."""
    models = [model_class(database) for model_class in read_model_classes(names)]
    for model in models:
        model.create()
    return models
