"""`lifecycle` command line: thin callers of bootstrap, one subcommand per process kind."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from pydantic import ValidationError

from lifecycle.errors import LifecycleError
from lifecycle.logs import configure_logging
from lifecycle.settings import Settings

if TYPE_CHECKING:
    from lifecycle.application import Accounts

cli = typer.Typer(
    help="Owns each member account's life, from registration to erasure.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def fail(message: str) -> NoReturn:
    """Bad configuration or an unreachable dependency: one clear line, no traceback."""
    typer.echo(f"lifecycle: {message}", err=True)
    raise typer.Exit(code=2)


def load_settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as error:
        problems = "; ".join(
            f"LIFECYCLE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in error.errors()
        )
        fail(f"invalid configuration: {problems}")
    except LifecycleError as error:
        fail(f"invalid configuration: {error.detail}")
    configure_logging(settings.log_format, settings.log_level)
    return settings


def open_accounts(settings: Settings) -> Accounts:
    from lifecycle.bootstrap import build_accounts

    try:
        return build_accounts(settings)
    except LifecycleError as error:
        fail(error.detail)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8000,
) -> None:
    """Run the HTTP API (members' routes, admin, audit)."""
    import uvicorn

    from lifecycle.api.app import create_app, with_generated_tokens

    settings = with_generated_tokens(load_settings())
    accounts = open_accounts(settings)
    uvicorn.run(
        create_app(settings, accounts), host=host, port=port, log_config=None, access_log=False
    )


audit = typer.Typer(help="Auditor tools over the event log.", no_args_is_help=True)
cli.add_typer(audit, name="audit")


@audit.command()
def reshred() -> None:
    """After a backup restore: destroy again every key whose account has a Purged event."""
    accounts = open_accounts(load_settings())
    destroyed = accounts.vault.destroy_keys_of_purged_accounts()
    typer.echo(f"keys destroyed again: {destroyed}")
    accounts.close()


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
