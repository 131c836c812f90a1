"""Data exports for ops: pending, failed and overdue exports, and the retry of one service.

The rules are `lifecycle.data_export.service.DataExports`' (the member routes call it too); a
retry is recorded on the export (`RetryRequested`), and the relay publishes the request again
from the event store, to the named service only, under the retry's own `ce_id`: with Kafka and
on the embedded default alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from lifecycle.data_export.service import DataExports
from lifecycle.data_export_aggregate import DataExport
from lifecycle.errors import ConflictError
from lifecycle.logs import get_logger
from lifecycle.services.actions import Actor

log = get_logger(__name__)
EXPORT_FILTERS = ("open", "failed", "overdue")


@dataclass(frozen=True)
class ExportRetry:
    export_id: UUID
    service: str
    retries: int


class ExportOps:
    def __init__(self, exports: DataExports) -> None:
        self.exports = exports

    def page(self, state: str, limit: int = 100) -> tuple[dict[str, int], list[DataExport]]:
        """Counts by state, and the oldest exports in `state` (one of EXPORT_FILTERS)."""
        return self.exports.counts(), self.exports.open_exports(state, limit)

    def retry(self, export_id: UUID, service: str, actor: Actor) -> ExportRetry:
        """Ask one service again for its part; refused once the part is in or the export
        is no longer pending."""
        asked = self.exports.retry(export_id, [service])
        if not asked:
            raise ConflictError(
                "data_export_not_pending", detail="the export is not waiting for this service"
            )
        export = self.exports.load(export_id)
        log.info(
            "data_export.retry_requested",
            export_id=str(export_id),
            service=service,
            retries=export.retries,
            role=actor.role,
            request_id=actor.request_id,
        )
        return ExportRetry(export_id, service, export.retries)
