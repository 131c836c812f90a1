"""Data exports for ops: pending, failed and overdue, per service, and retries."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Path, Query, status
from pydantic import BaseModel

from lifecycle.api.data_export_view import DataExportOut
from lifecycle.api.deps import ExportOpsDep, Limit, OpsActor
from lifecycle.api.problems import problem_responses
from lifecycle.api.routes.data_exports import ExportId
from schemas.contract import EXPORTING_SERVICES

router = APIRouter(prefix="/admin/v1")


class DataExportCounts(BaseModel):
    open: int
    failed: int
    overdue: int
    ready: int


class DataExportPage(BaseModel):
    counts: DataExportCounts
    items: list[DataExportOut]


class DataExportRetry(BaseModel):
    export_id: UUID
    service: str
    retries: int


@router.get(
    "/data-exports",
    operation_id="listDataExports",
    summary="Data exports still waiting for parts: all open, failed or overdue",
)
def list_data_exports(
    ops: ExportOpsDep,
    state: Annotated[
        Literal["open", "failed", "overdue"],
        Query(
            description="`open`: parts outstanding; `failed`: a part failed; `overdue`: "
            "past its deadline."
        ),
    ] = "open",
    limit: Limit = 100,
) -> DataExportPage:
    counts, items = ops.page(state, limit)
    return DataExportPage(
        counts=DataExportCounts(**counts), items=[DataExportOut.of(e) for e in items]
    )


@router.post(
    "/data-exports/{export_id}/services/{service}/retry",
    operation_id="retryDataExport",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Ask one service again for its part of a pending export",
    responses=problem_responses(404, 409, 422),
)
def retry_data_export(
    export_id: ExportId,
    service: Annotated[
        str,
        Path(
            description="An exporting service.", json_schema_extra={"enum": [*EXPORTING_SERVICES]}
        ),
    ],
    ops: ExportOpsDep,
    actor: OpsActor,
) -> DataExportRetry:
    return DataExportRetry.model_validate(
        ops.retry(export_id, service, actor), from_attributes=True
    )
