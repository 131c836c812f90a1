"""`lifecycle` command line: thin callers of bootstrap, one subcommand per process kind."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

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
    try:
        uvicorn.run(
            create_app(settings, accounts), host=host, port=port, log_config=None, access_log=False
        )
    finally:
        accounts.close()


audit = typer.Typer(help="Auditor tools over the event log.", no_args_is_help=True)
cli.add_typer(audit, name="audit")


@audit.command()
def reshred(
    from_kafka: Annotated[
        bool, typer.Option(help="Also take purged ids from the lifecycle topic (if configured).")
    ] = True,
) -> None:
    """After a backup restore: every account known purged is purged again and loses its key."""
    from lifecycle.audit import purged_ids_on_topic

    settings = load_settings()
    accounts = open_accounts(settings)
    ledger: set[Any] = set()
    if from_kafka and settings.kafka_bootstrap:
        ledger = purged_ids_on_topic(settings.kafka_bootstrap, settings.topics.lifecycle)
    result = accounts.reshred(ledger)
    accounts.close()
    typer.echo(
        f"purges recorded again: {result['purges_recorded_again']}, "
        f"keys destroyed again: {result['keys_destroyed']}"
    )


@audit.command("erasure-proof")
def erasure_proof(
    account_id: Annotated[str, typer.Argument(help="The purged account's id.")],
    digest: Annotated[
        list[str] | None,
        typer.Option(help="SHA-256 hex of one former value (repeatable); never the value."),
    ] = None,
    digests_file: Annotated[
        typer.FileText | None, typer.Option(help="A file of SHA-256 hex digests, one a line.")
    ] = None,
) -> None:
    """Prove erasure: confirmations, key destroyed, and a search for the former values."""
    import json
    from datetime import timedelta
    from uuid import UUID

    from lifecycle.audit import database_dump, topic_dump
    from lifecycle.audit import erasure_proof as prove
    from lifecycle.erasure import ErasureProcess

    settings = load_settings()
    digests = {d.strip().lower() for d in (digest or []) if d.strip()}
    if digests_file is not None:
        digests |= {line.strip().lower() for line in digests_file if line.strip()}
    if not digests or any(len(d) != 64 for d in digests):
        fail("give the former values as SHA-256 hex digests (--digest or --digests-file)")
    try:
        subject = UUID(account_id)
    except ValueError:
        fail("account id must be a UUID")
    accounts = open_accounts(settings)
    erasure = ErasureProcess(accounts, timedelta(hours=settings.erasure_deadline_hours))
    places: dict[str, Any] = {
        "database": database_dump(accounts, None if settings.is_embedded else settings.database_url)
    }
    if settings.kafka_bootstrap:
        places["kafka"] = topic_dump(settings.kafka_bootstrap, settings.topics.all())
    try:
        report = prove(accounts, erasure, subject, digests, places)
    except LifecycleError as error:
        fail(error.detail)
    typer.echo(json.dumps(report, default=str, indent=2))
    raise typer.Exit(code=0 if report["erased"] else 1)


schemas_cli = typer.Typer(help="The Kafka contract's JSON Schema files.", no_args_is_help=True)
cli.add_typer(schemas_cli, name="schemas")


@schemas_cli.command("export")
def export_schemas(
    check: Annotated[bool, typer.Option(help="Only report files that are out of date.")] = False,
) -> None:
    """Write schemas/v1/*.json from the payload models (or check they are current)."""
    from schemas.export import check_schemas
    from schemas.export import export_schemas as write_schemas

    if check:
        stale = check_schemas()
        for problem in stale:
            typer.echo(problem)
        raise typer.Exit(code=1 if stale else 0)
    for path in write_schemas():
        typer.echo(str(path))


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
