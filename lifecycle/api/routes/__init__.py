"""The API's routers and the dependencies they share."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from lifecycle.api.problems import NotReadyError
from lifecycle.application import Accounts
from lifecycle.bootstrap import build_erasure as erasure_process
from lifecycle.erasure import ErasureProcess


def get_accounts(request: Request) -> Accounts:
    """The application the app was created with (or built in its lifespan)."""
    accounts: Accounts | None = getattr(request.app.state, "accounts", None)
    if accounts is None:
        raise NotReadyError(detail="the service is starting or stopping")
    return accounts


AccountsDep = Annotated[Accounts, Depends(get_accounts)]


def get_erasure(request: Request, accounts: AccountsDep) -> ErasureProcess:
    """One erasure process per app, made on first use (it creates its table once)."""
    process: ErasureProcess | None = getattr(request.app.state, "erasure", None)
    if process is None or process.accounts is not accounts:
        process = erasure_process(accounts, request.app.state.settings)
        request.app.state.erasure = process
    return process


ErasureDep = Annotated[ErasureProcess, Depends(get_erasure)]
