"""`DataExports`: the rules of a member's data export, which the routes and workers call.

- request: one pending export per account (a second request answers with it). An account's
  exports have ids derived from the account and a sequence number, so two racing requests
  create the same aggregate and the event store's unique key lets one win. The export's key
  pair is made first; the account's own section is sealed to it at once (the same as a
  service's part), and the request reaches the services through the relay (the event store
  is the outbox: `DataExport.Requested` becomes `account.export-requested.v1`).
- parts in: chunks stored sealed (repeats ignored); a complete part is opened once, checked
  against its section's model, and recorded; the last one makes the export ready.
- reads settle time first: an export past `expires_at`, or of an account that is withdrawing
  or gone, ends (its key is destroyed) before anyone sees it; its download answers 410.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from uuid import UUID, uuid5

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError
from pydantic import ValidationError

from lifecycle.account_terms import AccountStatus
from lifecycle.application import Accounts
from lifecycle.data_export.document import account_section, stream_document
from lifecycle.data_export.keys import ExportKeys
from lifecycle.data_export.parts import SealedParts
from lifecycle.data_export_aggregate import OWN_PART, DataExport, ExportStatus
from lifecycle.errors import (
    AccountNotFoundError,
    AccountWithdrawingError,
    ConflictError,
    GoneError,
    InvalidCommandError,
)
from lifecycle.logs import get_logger
from lifecycle.migrations import EXPORT_CHUNKS, EXPORT_KEYS, EXPORTS
from lifecycle.sealed_box import SealedBoxError, open_part, seal_part
from lifecycle.storage import Database
from schemas.contract import EXPORTING_SERVICES
from schemas.data_export import SECTION_MODELS, ExportPartV1

EXPORT_ID_NAMESPACE = UUID("6f1d2b0e-8c3a-5d47-9e21-4b7a0c9d3e58")
DEFAULT_EXPIRY = timedelta(days=7)
DEFAULT_DEADLINE = timedelta(days=14)

log = get_logger(__name__)


class ExportNotFoundError(AccountNotFoundError):
    code = "data_export_not_found"


class ExportGoneError(GoneError):
    """Expired, or cancelled by a withdrawal: its key is destroyed, nothing opens any more."""

    code = "data_export_gone"


class ExportNotReadyError(ConflictError):
    code = "data_export_not_ready"


class UnknownServiceError(InvalidCommandError):
    code = "unknown_service"


def export_id_of(account_id: UUID, sequence: int) -> UUID:
    """The id of an account's `sequence`-th export (from 1)."""
    return uuid5(EXPORT_ID_NAMESPACE, f"{account_id}:{sequence}")


@dataclass(frozen=True)
class Requested:
    export: DataExport
    created: bool


class DataExports:
    def __init__(
        self,
        accounts: Accounts,
        *,
        services: tuple[str, ...] = EXPORTING_SERVICES,
        expiry: timedelta = DEFAULT_EXPIRY,
        deadline: timedelta = DEFAULT_DEADLINE,
    ) -> None:
        self.accounts = accounts
        self.database = accounts.database
        self.services = services
        self.expiry = expiry
        self.deadline = deadline
        self.keys = ExportKeys(self.database, accounts.vault.keyring)
        self.parts = SealedParts(self.database)
        self.table = self.database.table(EXPORTS)

    # Commands

    def request(self, account_id: UUID) -> Requested:
        """A new export, or the account's pending one (created False)."""
        for _ in range(8):
            account = self.accounts.get_account(account_id)  # 404, 410
            if account.status is not AccountStatus.ACTIVE:
                raise AccountWithdrawingError()
            latest, sequence = self._latest(account_id)
            if latest is not None and latest.status is ExportStatus.REQUESTED:
                return Requested(latest, created=False)
            export_id = export_id_of(account_id, sequence + 1)
            public_key = self.keys.create(export_id, account_id)
            export = DataExport.request(
                export_id=export_id,
                account_id=account_id,
                public_key=public_key,
                services=list(self.services),
                at=datetime.now(UTC),
                deadline=self.deadline,
                expiry=self.expiry,
            )
            section = account_section(account).model_dump_json(by_alias=True).encode()
            own = seal_part(
                public_key, section, export_id=export_id, account_id=account_id, service=OWN_PART
            )
            self.parts.store(own)
            export.receive_part(OWN_PART, own[0].part_id, now=datetime.now(UTC), expiry=self.expiry)
            try:
                self.accounts.save(export)
            except IntegrityError:
                continue  # another request created it first: answer with that one
            self._index(export)
            log.info("data_export.requested", account_id=str(account_id), export_id=str(export_id))
            # A withdrawal that committed meanwhile deleted the key, or is seen now.
            if self.accounts.get_account(account_id).status is not AccountStatus.ACTIVE:
                self._end(export, ExportStatus.CANCELLED, "withdrawal")
            return Requested(export, created=True)
        raise ConflictError("concurrent_update")

    def take_parts(self, parts: Sequence[ExportPartV1]) -> None:
        """Parts from the services (already attributed by topic): failures recorded, sealed
        chunks stored, every part now complete opened, checked and recorded."""
        live: dict[UUID, DataExport | None] = {}
        for part in parts:
            if part.export_id not in live:
                live[part.export_id] = self._live(part.export_id, part.account_id)
        wanted = [p for p in parts if live.get(p.export_id) is not None]
        for part in wanted:
            if part.failure_code is not None:
                self._record(part.export_id, partial(_fail, part.service, part.failure_code))
        for export_id, service, part_id in sorted(self.parts.store(wanted), key=str):
            export = live[export_id]
            assert export is not None
            code = self._check_part(export, service, part_id)
            if code is None:
                self._record(export_id, partial(_receive, service, part_id, self.expiry))
            else:
                self._record(export_id, partial(_fail, service, code))

    def retry(self, export_id: UUID, services: Iterable[str] | None = None) -> list[str]:
        """Ask services again (all outstanding ones when None); the relay publishes it."""
        wanted = list(services) if services is not None else list(self.services)
        unknown = [s for s in wanted if s not in self.services]
        if unknown:
            raise UnknownServiceError(detail=f"expected one of {', '.join(self.services)}")
        export = self._settled(self.load(export_id))
        asked = export.retry(wanted)
        if asked:
            self.accounts.save(export)
            log.info("data_export.retry", export_id=str(export_id), services=asked)
        return asked

    def expire_due(self, now: datetime | None = None) -> int:
        """End every export past its expiry, or of an account no longer active (a sweep)."""
        now = now or datetime.now(UTC)
        db = self.database
        with db.transaction(commit=False) as cursor:
            rows = cursor.execute(
                f"SELECT export_id FROM {self.table} WHERE status IN (%s, %s)",
                (ExportStatus.REQUESTED.value, ExportStatus.READY.value),
            ).fetchall()
        ended = 0
        for (export_id,) in rows:
            export = self.load(db.to_uuid(export_id))
            if not self._settled(export, now).is_live:
                ended += 1
        return ended

    def cancel_all(self, account_id: UUID, reason: str = "withdrawal") -> int:
        """End every live export of the account (a withdrawal)."""
        cancelled = 0
        for export in self._exports_of(account_id):
            if export.is_live:
                self._end(export, ExportStatus.CANCELLED, reason)
                cancelled += 1
        return cancelled

    # Queries

    def get(self, account_id: UUID, export_id: UUID) -> DataExport:
        export = self.load(export_id)
        if export.account_id != account_id:
            raise ExportNotFoundError()
        return self._settled(export)

    def download(self, account_id: UUID, export_id: UUID) -> Iterator[bytes]:
        """The document's bytes (checks first, so a refusal comes before any byte)."""
        export = self.get(account_id, export_id)
        if not export.is_live:
            raise ExportGoneError()
        if export.status is not ExportStatus.READY:
            raise ExportNotReadyError()
        key = self.keys.private_key(export_id)
        if key is None:
            raise ExportGoneError()
        log.info("data_export.downloaded", account_id=str(account_id), export_id=str(export_id))

        def section(service: str) -> Iterator[bytes]:
            for chunk in self.parts.chunks_of(export_id, service, UUID(export.received[service])):
                yield open_part(key, chunk)

        return stream_document(export, section)

    def latest_ready(self, account_id: UUID) -> DataExport | None:
        """The account's newest export if it is ready (for the withdrawal preview)."""
        latest, _ = self._latest(account_id)
        return latest if latest is not None and latest.status is ExportStatus.READY else None

    def open_exports(self, state: str = "open", limit: int = 100) -> list[DataExport]:
        """Exports still requested, oldest first (ops): `open` all, `failed` those with a
        failed part, `overdue` those past their deadline."""
        db = self.database
        where = {
            "open": "",
            "failed": " AND failed_services <> ''",
            "overdue": " AND due_at < %s",
        }[state]
        params: list[object] = [ExportStatus.REQUESTED.value]
        if state == "overdue":
            params.append(_at(db, datetime.now(UTC)))
        with db.transaction(commit=False) as cursor:
            rows = cursor.execute(
                f"SELECT export_id FROM {self.table} WHERE status = %s{where} "
                "ORDER BY requested_at LIMIT %s",
                [*params, limit],
            ).fetchall()
        exports = [self._settled(self.load(db.to_uuid(row[0]))) for row in rows]
        return [e for e in exports if e.status is ExportStatus.REQUESTED]

    def counts(self, now: datetime | None = None) -> dict[str, int]:
        """Exports by state, from the status rows (one query): open (parts outstanding),
        failed (a part failed), overdue (past the deadline), ready."""
        db = self.database
        with db.transaction(commit=False) as cursor:
            row = cursor.execute(
                # Named columns: PostgreSQL rows come back as dicts keyed by name.
                "SELECT "
                "COALESCE(SUM(CASE WHEN status = %s THEN 1 ELSE 0 END), 0) AS open, "
                "COALESCE(SUM(CASE WHEN status = %s AND failed_services <> '' "
                "THEN 1 ELSE 0 END), 0) AS failed, "
                "COALESCE(SUM(CASE WHEN status = %s AND due_at < %s THEN 1 ELSE 0 END), 0) "
                "AS overdue, "
                "COALESCE(SUM(CASE WHEN status = %s THEN 1 ELSE 0 END), 0) AS ready "
                f"FROM {self.table}",
                (
                    ExportStatus.REQUESTED.value,
                    ExportStatus.REQUESTED.value,
                    ExportStatus.REQUESTED.value,
                    _at(db, now or datetime.now(UTC)),
                    ExportStatus.READY.value,
                ),
            ).fetchone() or (0, 0, 0, 0)
        return dict(zip(("open", "failed", "overdue", "ready"), (int(v) for v in row), strict=True))

    # Internals

    def load(self, export_id: UUID) -> DataExport:
        try:
            export: object = self.accounts.repository.get(export_id)
        except AggregateNotFoundError:
            raise ExportNotFoundError() from None
        if not isinstance(export, DataExport):
            raise ExportNotFoundError()
        return export

    def _latest(self, account_id: UUID) -> tuple[DataExport | None, int]:
        """The account's newest export (settled) and its sequence number (0: none yet)."""
        latest, sequence = self._newest(account_id)
        return (self._settled(latest) if latest else None), sequence

    def _newest(self, account_id: UUID) -> tuple[DataExport | None, int]:
        """As `_latest`, the export as stored: `cancel_all` counts what it ends itself."""
        sequence, latest = self._count(account_id), None
        sequence = max(sequence - 1, 0)
        while True:
            try:
                found = self.load(export_id_of(account_id, sequence + 1))
            except ExportNotFoundError:
                break
            latest, sequence = found, sequence + 1
        if latest is None and sequence > 0:
            latest = self.load(export_id_of(account_id, sequence))
        return latest, sequence

    def _exports_of(self, account_id: UUID) -> list[DataExport]:
        _, sequence = self._newest(account_id)
        return [self.load(export_id_of(account_id, n)) for n in range(1, sequence + 1)]

    def _count(self, account_id: UUID) -> int:
        db = self.database
        with db.transaction(commit=False) as cursor:
            (count,) = cursor.execute(
                f"SELECT COUNT(*) FROM {self.table} WHERE account_id = %s",
                (db.id_param(account_id),),
            ).fetchone() or (0,)
        return int(count)

    def _live(self, export_id: UUID, account_id: UUID) -> DataExport | None:
        try:
            export = self._settled(self.load(export_id))
        except ExportNotFoundError:
            return None
        return export if export.is_live and export.account_id == account_id else None

    def _settled(self, export: DataExport, now: datetime | None = None) -> DataExport:
        """The export with time and the account's fate applied: ended (key destroyed) when
        past its expiry or when the account is no longer active."""
        if not export.is_live:
            return export
        now = now or datetime.now(UTC)
        if export.is_past_expiry(now):
            return self._end(export, ExportStatus.EXPIRED, "expired")
        try:
            status = self.accounts.load_for_audit(export.account_id).status
        except AccountNotFoundError:
            status = AccountStatus.PURGED
        if status is not AccountStatus.ACTIVE:
            return self._end(export, ExportStatus.CANCELLED, "withdrawal")
        return export

    def _end(self, export: DataExport, status: ExportStatus, reason: str) -> DataExport:
        """Destroy the key and the sealed parts first (what must not outlive the export),
        then record the end; a crash between leaves a live-looking export without its key,
        which its next read ends."""
        self.keys.destroy(export.id)
        self.parts.delete(export.id)
        self.database.after_erasure([EXPORT_KEYS, EXPORT_CHUNKS])

        ended = self._record(export.id, partial(_end, status, reason))
        log.info("data_export.ended", export_id=str(export.id), status=status.value, reason=reason)
        return ended

    def _record(self, export_id: UUID, change: Callable[[DataExport], bool]) -> DataExport:
        """Apply `change(export) -> bool` to the stored export and save it (retried on a
        concurrent update); returns the export as it stands."""
        for _ in range(16):
            export = self.load(export_id)
            if not change(export):
                return export
            try:
                self.accounts.save(export)
            except IntegrityError:
                continue
            self._index(export)
            return export
        raise ConflictError("concurrent_update")

    def _check_part(self, export: DataExport, service: str, part_id: UUID) -> str | None:
        """Open a complete part and check it against its section's model: None when good,
        else the failure code to record (the part is then dropped)."""
        key = self.keys.private_key(export.id)
        model = SECTION_MODELS.get(service)
        if key is None or model is None:
            return "internal_error"
        try:
            data = b"".join(
                open_part(key, c) for c in self.parts.chunks_of(export.id, service, part_id)
            )
            model.model_validate_json(data)
        except (SealedBoxError, ValidationError, LookupError) as error:
            log.warning(
                "data_export.part_refused",
                export_id=str(export.id),
                service=service,
                error=type(error).__name__,
            )
            return "internal_error"
        return None

    def _index(self, export: DataExport) -> None:
        """The export's status row (ops' lists and the sweep); rewritten after every save."""
        db = self.database
        with db.transaction() as cursor:
            cursor.execute(
                f"INSERT INTO {self.table} (export_id, account_id, status, requested_at, due_at, "
                "expires_at, failed_services) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (export_id) DO UPDATE SET status = excluded.status, "
                "expires_at = excluded.expires_at, failed_services = excluded.failed_services, "
                f"updated_at = {db.now}",
                (
                    db.id_param(export.id),
                    db.id_param(export.account_id),
                    export.status.value,
                    _at(db, export.requested_at),
                    _at(db, export.due_at),
                    _at(db, export.expires_at),
                    ",".join(sorted(export.failed)),
                ),
            )


# What `_record` applies to the stored export (each records nothing when it changes nothing).


def _fail(service: str, code: str, export: DataExport) -> bool:
    return export.fail_part(service, code)


def _receive(service: str, part_id: UUID, expiry: timedelta, export: DataExport) -> bool:
    return export.receive_part(service, part_id, now=datetime.now(UTC), expiry=expiry)


def _end(status: ExportStatus, reason: str, export: DataExport) -> bool:
    return export.end(status, reason)


def _at(database: Database, moment: datetime) -> object:
    return database.dialect.timestamp(moment)  # SQLite: ISO text in UTC, so it sorts
