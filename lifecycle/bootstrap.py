"""The one place that builds the service's parts from Settings; nothing heavy at import."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from lifecycle.application import Accounts
from lifecycle.errors import LifecycleError
from lifecycle.settings import Settings


class StartupError(LifecycleError):
    """Configuration or a dependency is unusable; the CLI prints one line and exits."""

    code = "startup_failed"


def build_accounts(settings: Settings) -> Accounts:
    try:
        env = settings.application_env()  # configuration errors first, before any connection
        with _schema_setup_turn(settings):
            return Accounts(env=env)
    except LifecycleError as error:
        raise StartupError(detail=f"{error.code}: {error.detail}") from None
    except Exception as error:
        # Name the kind of failure without echoing credentials from the URL.
        raise StartupError(
            detail=f"database unusable ({type(error).__name__}): {_first_line(error)}"
        ) from None


@contextmanager
def _schema_setup_turn(settings: Settings) -> Iterator[None]:
    """Processes starting together (API, relay, erasure) create tables one at a time.

    The library's own CREATE ... IF NOT EXISTS and CREATE OR REPLACE FUNCTION fail when two
    sessions run them at once; a session-level advisory lock makes them take turns.
    """
    if settings.is_embedded:
        yield
        return
    with psycopg.connect(settings.database_url, connect_timeout=5, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_advisory_lock(hashtextextended(%s, 0))",
            (f"lifecycle-setup:{settings.database_schema}",),
        )
        yield


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
