"""The one place that builds the service's parts from Settings; nothing heavy at import."""

from __future__ import annotations

from lifecycle.application import Accounts
from lifecycle.errors import LifecycleError
from lifecycle.settings import Settings
from lifecycle.storage import schema_setup_turn


class StartupError(LifecycleError):
    """Configuration or a dependency is unusable; the CLI prints one line and exits."""

    code = "startup_failed"


def build_accounts(settings: Settings) -> Accounts:
    try:
        env = settings.application_env()  # configuration errors first, before any connection
        with schema_setup_turn(settings.database_url, settings.database_schema):
            return Accounts(env=env)
    except LifecycleError as error:
        raise StartupError(detail=f"{error.code}: {error.detail}") from None
    except Exception as error:
        # Name the kind of failure without echoing credentials from the URL.
        raise StartupError(
            detail=f"database unusable ({type(error).__name__}): {_first_line(error)}"
        ) from None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
