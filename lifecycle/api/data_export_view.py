"""`DataExportOut`: an export's state as the members' front end and ops see it (no values)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field

from lifecycle.data_export_aggregate import DataExport

PartState = Literal["pending", "received", "failed"]


class ExportPartOut(BaseModel):
    status: PartState
    failure_code: str | None = None


class DataExportLinks(BaseModel):
    self: str = Field(description="This export's status.")
    download: str | None = Field(description="The document, once ready; None before.")


class DataExportOut(BaseModel):
    export_id: UUID
    account_id: UUID
    status: Literal["requested", "ready", "expired", "cancelled"]
    requested_at: datetime
    due_at: datetime = Field(description="When every part is due; later, the export is overdue.")
    expires_at: datetime = Field(description="When its key is destroyed and the download ends.")
    ready_at: datetime | None
    ended_at: datetime | None
    overdue: bool
    retries: int
    parts: dict[str, ExportPartOut] = Field(description="Each service's part, by service.")
    links: DataExportLinks

    @classmethod
    def of(cls, export: DataExport, now: datetime | None = None) -> DataExportOut:
        status_link = export_path(export.account_id, export.id)
        ready = export.status.value == "ready"
        return cls(
            export_id=export.id,
            account_id=export.account_id,
            status=export.status.value,
            requested_at=export.requested_at,
            due_at=export.due_at,
            expires_at=export.expires_at,
            ready_at=export.ready_at,
            ended_at=export.ended_at,
            overdue=export.is_overdue(now or datetime.now(UTC)),
            retries=export.retries,
            parts={service: _part(export, service) for service in export.services},
            links=DataExportLinks(
                self=status_link, download=f"{status_link}/download" if ready else None
            ),
        )


def _part(export: DataExport, service: str) -> ExportPartOut:
    if service in export.received:
        return ExportPartOut(status="received")
    if service in export.failed:
        return ExportPartOut(status="failed", failure_code=export.failed[service])
    return ExportPartOut(status="pending")


def export_path(account_id: UUID, export_id: UUID) -> str:
    return f"/v1/accounts/{account_id}/data-exports/{export_id}"
