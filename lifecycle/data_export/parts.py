"""The sealed chunks of every export's parts, as the services sent them (and the lifecycle
service's own part, sealed the same way). Nothing here opens without the export's private key
(lifecycle.data_export.keys); rows go with the export's end, and with the account's
withdrawal or purge by the database's trigger (lifecycle.migrations)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from uuid import UUID

from lifecycle.migrations import EXPORT_CHUNKS
from lifecycle.storage import Database
from schemas.data_export import ExportPartV1, SealedBoxV1

# A stored chunk's production time is not kept (the envelope had it); opening ignores it.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
COLUMNS = (
    ("export_id", "uuid"),
    ("account_id", "uuid"),
    ("service", "text"),
    ("part_id", "text"),
    ("chunk", "int"),
    ("chunks", "int"),
    ("sealed", "text"),
)


class SealedParts:
    def __init__(self, database: Database) -> None:
        self.database = database
        self.table = database.table(EXPORT_CHUNKS)

    def store(self, parts: Sequence[ExportPartV1]) -> set[tuple[UUID, str, UUID]]:
        """Keep sealed chunks (a repeat is ignored); returns the (export, service, part) whose
        chunks are now all here."""
        sealed = [p for p in parts if p.sealed is not None]
        if not sealed:
            return set()
        db = self.database
        with db.transaction() as cursor:
            cursor.insert_rows(
                self.table,
                COLUMNS,
                [
                    (
                        db.id_param(p.export_id),
                        db.id_param(p.account_id),
                        p.service,
                        str(p.part_id),
                        p.chunk,
                        p.chunks,
                        p.sealed.model_dump_json() if p.sealed else "",
                    )
                    for p in sealed
                ],
                suffix="ON CONFLICT DO NOTHING",
            )
            complete: set[tuple[UUID, str, UUID]] = set()
            for key in {(p.export_id, p.service, p.part_id, p.chunks) for p in sealed}:
                export_id, service, part_id, chunks = key
                (count,) = cursor.execute(
                    f"SELECT COUNT(*) FROM {self.table} "
                    "WHERE export_id = %s AND service = %s AND part_id = %s",
                    (db.id_param(export_id), service, str(part_id)),
                ).fetchone() or (0,)
                if int(count) >= chunks:
                    complete.add((export_id, service, part_id))
        return complete

    def chunks_of(self, export_id: UUID, service: str, part_id: UUID) -> Iterator[ExportPartV1]:
        """The part's chunks in order, read one at a time (a download holds one in memory)."""
        db = self.database
        index = 0
        while True:
            with db.transaction(commit=False) as cursor:
                row = cursor.execute(
                    f"SELECT account_id, chunks, sealed FROM {self.table} WHERE export_id = %s "
                    "AND service = %s AND part_id = %s AND chunk = %s",
                    (db.id_param(export_id), service, str(part_id), index),
                ).fetchone()
            if row is None:
                raise LookupError("export chunk missing")
            account_id, chunks, sealed = row
            yield ExportPartV1(
                export_id=export_id,
                account_id=db.to_uuid(account_id),
                service=service,
                part_id=part_id,
                outcome="sealed",
                chunk=index,
                chunks=int(chunks),
                sealed=SealedBoxV1.model_validate_json(sealed),
                produced_at=_EPOCH,
            )
            index += 1
            if index >= int(chunks):
                return

    def delete(self, export_id: UUID) -> int:
        db = self.database
        with db.transaction() as cursor:
            cursor.execute(
                f"DELETE FROM {self.table} WHERE export_id = %s", (db.id_param(export_id),)
            )
            return cursor.rowcount

    def held_for(self, account_id: UUID) -> int:
        db = self.database
        with db.transaction(commit=False) as cursor:
            (count,) = cursor.execute(
                f"SELECT COUNT(*) FROM {self.table} WHERE account_id = %s",
                (db.id_param(account_id),),
            ).fetchone() or (0,)
        return int(count)
