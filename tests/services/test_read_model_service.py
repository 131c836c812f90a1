"""Read models at the service layer: a catch-up brings the named ones to the log's head, a
rebuild replays one from 0 and swaps it in, and an unknown name is a bad command before any
work is done."""

from __future__ import annotations

import pytest

from lifecycle.application import Accounts
from lifecycle.errors import InvalidCommandError
from lifecycle.services.read_models import ReadModels
from projections.directory import AccountDirectory
from projections.runner import Progress


def registered(accounts: Accounts, n: int) -> None:
    for i in range(n):
        accounts.register(
            email=f"rm-{i}@read-models.example", display_name="Ilse", consent_version="v1"
        )


def test_a_catch_up_brings_the_named_read_models_to_the_head(accounts: Accounts) -> None:
    registered(accounts, 3)
    read_models = ReadModels(accounts)
    seen: list[Progress] = []

    read_models.catch_up(["account_directory"], batch_size=2, progress=seen.append)

    head = read_models.log_head()
    states = {s.name: s for s in read_models.states().read_models}
    assert (states["account_directory"].position, states["account_directory"].lag) == (head, 0)
    assert AccountDirectory(accounts.database).counts_by_status()["active"] == 3
    assert seen and seen[-1].finished


def test_a_rebuild_replays_from_zero_and_swaps_the_result_in(accounts: Accounts) -> None:
    registered(accounts, 2)
    read_models = ReadModels(accounts)
    read_models.catch_up(["account_directory"])
    accounts.register(email="late@read-models.example", display_name="Ilse", consent_version="v1")

    [done] = read_models.rebuild(["account_directory"], batch_size=1)

    head = read_models.log_head()
    assert (done.name, done.events, done.position) == ("account_directory", head, head)
    directory = AccountDirectory(accounts.database)
    assert directory.position() == head
    assert directory.counts_by_status()["active"] == 3  # the late one too
    assert all(s.rebuilding_position is None for s in read_models.states().read_models)


@pytest.mark.parametrize("use", ["catch_up", "rebuild", "opened"])
def test_an_unknown_read_model_is_a_bad_command(accounts: Accounts, use: str) -> None:
    read_models = ReadModels(accounts)
    with pytest.raises(InvalidCommandError) as refused:
        result = getattr(read_models, use)(["account_directory", "nope"])
        list(result or [])
    assert refused.value.detail is not None and "unknown projection nope" in refused.value.detail
    assert read_models.states().read_models[0].position == 0  # nothing was done
