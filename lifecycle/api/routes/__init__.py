"""The API's routers and the dependencies they share."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from lifecycle.api.problems import NotReadyError
from lifecycle.application import Accounts


def get_accounts(request: Request) -> Accounts:
    """The application the app was created with (or built in its lifespan)."""
    accounts: Accounts | None = getattr(request.app.state, "accounts", None)
    if accounts is None:
        raise NotReadyError(detail="the service is starting or stopping")
    return accounts


AccountsDep = Annotated[Accounts, Depends(get_accounts)]
