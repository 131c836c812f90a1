"""`lifecycle audit ...`: the auditor's tools over the event log, adapters over the services
(`lifecycle.services.event_log`, `lifecycle.services.erasure_evidence`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer

from lifecycle.cli.common import cli, fail, load_settings, open_accounts, progress_to_stderr
from lifecycle.errors import LifecycleError, NotFoundError

if TYPE_CHECKING:
    from lifecycle.services.erasure_evidence import ErasureEvidence

audit = typer.Typer(help="Auditor tools over the event log.", no_args_is_help=True)
cli.add_typer(audit, name="audit")


@audit.command()
def reshred(
    receipts: Annotated[
        list[Path] | None,
        typer.Option(
            "--receipts",
            help="Signed erasure receipts kept outside the database: a file (JSON, a JSON "
            "array or JSON Lines) or a directory of them; repeatable.",
        ),
    ] = None,
) -> None:
    """After a backup restore: every account known purged (by a receipt this service signed,
    or by the destroyed-keys list; never by a topic record) is brought back to Purged,
    whatever state the backup caught it in, and loses its key."""
    from lifecycle.bootstrap import erasure_evidence

    settings = load_settings()
    accounts = open_accounts(settings)
    try:
        done = erasure_evidence(accounts, settings).reshred(receipts or [])
    except LifecycleError as error:
        fail(error.detail)
    finally:
        accounts.close()
    typer.echo(
        f"purges recorded again: {done.purges_recorded_again}, "
        f"keys destroyed again: {done.keys_destroyed}, "
        f"receipts issued again: {done.receipts_issued_again}, "
        f"receipts refused: {done.receipts_refused}"
    )
    if done.receipts_refused:
        raise typer.Exit(1)


@audit.command("verify-receipt")
def verify_receipt(
    receipt: Annotated[
        str, typer.Argument(help="A receipt file (JSON), or a receipt id or account id.")
    ],
) -> None:
    """Check an erasure receipt: its signature, and that the hash chain still holds the purge."""
    from lifecycle.bootstrap import erasure_evidence

    given = _receipt_or_id(receipt)
    settings = load_settings()
    accounts = open_accounts(settings)
    try:
        evidence = erasure_evidence(accounts, settings)
        report = evidence.verify_receipt(_receipt(evidence, given))
    except LifecycleError as error:
        fail(error.detail)
    finally:
        accounts.close()
    typer.echo(json.dumps(report, indent=2))
    if not report["ok"]:
        typer.echo(f"lifecycle: receipt does not verify: {report['problems'][0]}", err=True)
    raise typer.Exit(code=0 if report["ok"] else 1)


def _receipt(evidence: ErasureEvidence, given: dict[str, Any] | UUID) -> dict[str, Any]:
    """The receipt given, or the one stored under the id given (a receipt's or its account's)."""
    if isinstance(given, dict):
        return given
    try:
        return evidence.receipt(given)
    except NotFoundError:
        return evidence.receipt_of(given)


def _receipt_or_id(text: str) -> dict[str, Any] | UUID:
    """A receipt read from a file, or the id to look one up by."""
    path = Path(text)
    if path.is_file():
        try:
            return dict(json.loads(path.read_text()))
        except (ValueError, TypeError):
            fail(f"{text} is not a JSON receipt")
    try:
        return UUID(text)
    except ValueError:
        fail("give a receipt file, a receipt id or an account id")


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
    service_schema: Annotated[
        list[str] | None,
        typer.Option(
            help="SERVICE=SCHEMA where a reference service keeps its tables (repeatable); "
            "by default each at the schema named after it, when it exists."
        ),
    ] = None,
) -> None:
    """Prove erasure: walk the registry of resting places, search each, check each."""
    from lifecycle.bootstrap import erasure_evidence

    try:
        subject = UUID(account_id)
    except ValueError:
        fail("account id must be a UUID")
    schemas = dict(item.partition("=")[::2] for item in service_schema or [])
    if not all(schemas.values()):
        fail("--service-schema takes SERVICE=SCHEMA")
    digests = [*(digest or []), *(digests_file or [])]
    settings = load_settings()
    accounts = open_accounts(settings)
    try:
        report = erasure_evidence(accounts, settings).prove(subject, digests, schemas)
    except LifecycleError as error:
        fail(error.detail)
    finally:
        accounts.close()
    typer.echo(json.dumps(report, default=str, indent=2))
    raise typer.Exit(code=0 if report["erased"] else 1)


@audit.command("export")
def audit_export(
    since: Annotated[
        str | None,
        typer.Option("--from", help="First notification id, or ISO date/time (JST if no offset)."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--to", help="Last notification id (inclusive), or ISO time (exclusive)."),
    ] = None,
    output: Annotated[
        typer.FileTextWrite | None, typer.Option("--output", "-o", help="File (default stdout).")
    ] = None,
) -> None:
    """Stream the whole event log as JSON Lines, as stored (personal fields stay sealed)."""
    from lifecycle.services.event_log import EventLog

    accounts = open_accounts(load_settings())
    try:
        log = EventLog(accounts, progress_to_stderr("export (notifications)"))
        written = log.export(output or sys.stdout, since, until)
    except LifecycleError as error:
        fail(error.detail)
    finally:
        accounts.close()
    typer.echo(f"events exported: {written}", err=True)


@audit.command("replay")
def audit_replay(
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Processes folding the log side by side (default: one per core, up to 4, "
            "fewer for a short log; always one on SQLite).",
        ),
    ] = None,
) -> None:
    """Rebuild every aggregate from the log and check every rule; exit 1 on any violation."""
    from lifecycle.services.event_log import EventLog, one_pass

    accounts = open_accounts(one_pass(load_settings()))
    try:
        report = EventLog(accounts, progress_to_stderr("replay (events)")).replay(workers)
    except LifecycleError as error:
        fail(error.detail)
    finally:
        accounts.close()
    typer.echo(json.dumps(report.as_dict(), indent=2))
    raise typer.Exit(code=0 if report.ok else 1)


@audit.command("verify")
def audit_verify() -> None:
    """Recompute the hash chain over the stored events; name the first that does not match."""
    from lifecycle.services.event_log import EventLog

    accounts = open_accounts(load_settings())
    try:
        result = EventLog(accounts, progress_to_stderr("verify (events)")).verify()
    finally:
        accounts.close()
    typer.echo(json.dumps(result.as_dict(), indent=2))
    if not result.ok:
        typer.echo(f"lifecycle: hash chain broken: {result.first[0].describe()}", err=True)
    raise typer.Exit(code=0 if result.ok else 1)
