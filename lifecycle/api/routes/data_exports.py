"""A member's data export, for the members' front end (role `service`): request it, follow
it, download it. The rules are `lifecycle.data_export.service.DataExports`'."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Response, status
from fastapi.responses import StreamingResponse

from lifecycle.api.auth import require_role
from lifecycle.api.data_export_view import DataExportOut, export_path
from lifecycle.api.deps import AccountId, DataExportsDep
from lifecycle.api.problems import problem_responses
from lifecycle.data_export.service import ExportNotFoundError

router = APIRouter(
    prefix="/v1",
    tags=["data exports"],
    dependencies=[Depends(require_role("service"))],
    responses=problem_responses(401, 403),
)
DOCUMENT_SCHEMA = "https://schemas.jobchange.jp/lifecycle/v1/account.data-export.v1.json"


def export_id_param(
    export_id: Annotated[
        str, Path(description="The export's id (a UUID).", json_schema_extra={"format": "uuid"})
    ],
) -> UUID:
    """An id that is no UUID names no export: 404, like any other unknown id."""
    try:
        return UUID(export_id)
    except ValueError:
        raise ExportNotFoundError() from None


ExportId = Annotated[UUID, Depends(export_id_param)]


@router.post(
    "/accounts/{account_id}/data-exports",
    operation_id="requestDataExport",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Request a copy of everything the platform holds about the member",
    description=(
        "One pending export per account: while one is pending, asking again answers 200 with "
        "it. The services seal their parts to the export's key; follow the `Location` link."
    ),
    responses={
        200: {"model": DataExportOut, "description": "The account's pending export"},
        **problem_responses(404, 409, 410),
    },
)
def request_data_export(
    account_id: AccountId, exports: DataExportsDep, response: Response
) -> DataExportOut:
    requested = exports.request(account_id)
    if not requested.created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = export_path(account_id, requested.export.id)
    return DataExportOut.of(requested.export)


@router.get(
    "/accounts/{account_id}/data-exports/{export_id}",
    operation_id="getDataExport",
    summary="Where the export stands: each service's part, ready, expired",
    responses=problem_responses(404),
)
def get_data_export(
    account_id: AccountId, export_id: ExportId, exports: DataExportsDep
) -> DataExportOut:
    return DataExportOut.of(exports.get(account_id, export_id))


@router.get(
    "/accounts/{account_id}/data-exports/{export_id}/download",
    operation_id="downloadDataExport",
    summary="The export's document (`account.data-export.v1`), streamed",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": f"The document; its JSON Schema is {DOCUMENT_SCHEMA}",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        **problem_responses(404, 409, 410),
    },
)
def download_data_export(
    account_id: AccountId, export_id: ExportId, exports: DataExportsDep
) -> StreamingResponse:
    document = exports.download(account_id, export_id)
    return StreamingResponse(
        document,
        media_type="application/json",
        headers={"Link": f'<{DOCUMENT_SCHEMA}>; rel="describedby"'},
    )
