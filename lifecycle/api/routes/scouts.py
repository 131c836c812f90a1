"""Bulk scouts, for the platform's own services (role `service`): a company scouts hundreds
of members at once, so one request records up to `MAX_BULK_SCOUTS` scouts.

Each item has the outcome the single route (`POST /v1/accounts/{id}/scouts`) would give it,
in the order sent: recorded, already recorded, or refused with that route's problem `code`.
One item's refusal never fails the others; every recorded scout is durable before the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from lifecycle.api.auth import require_role
from lifecycle.api.deps import AccountsDep
from lifecycle.api.idempotency import TAKES_IDEMPOTENCY_KEY
from lifecycle.api.models import ExternalId, RequestModel, UuidText
from lifecycle.api.problems import problem_responses, status_for, title_for
from lifecycle.application import ScoutItem, ScoutOutcome
from lifecycle.errors import LifecycleError
from lifecycle.probe import PROBLEM_TYPE_PREFIX

# A request's body stays under the API's body limit (256 KiB) with ids of typical length.
MAX_BULK_SCOUTS = 1000

router = APIRouter(
    prefix="/v1",
    tags=["accounts"],
    dependencies=[Depends(require_role("service"))],
    responses=problem_responses(401, 403),
)


class BulkScout(RequestModel):
    account_id: UuidText = Field(description="The member's account id")
    scout_id: ExternalId
    company_id: ExternalId
    job_id: ExternalId


class BulkScoutsRequest(RequestModel):
    scouts: list[BulkScout] = Field(min_length=1, max_length=MAX_BULK_SCOUTS)

    def items(self) -> list[ScoutItem]:
        """The scouts as the application takes them."""
        return [
            ScoutItem(
                account_id=UUID(s.account_id),
                scout_id=s.scout_id,
                company_id=s.company_id,
                job_id=s.job_id,
            )
            for s in self.scouts
        ]


class ItemProblem(BaseModel):
    """The problem the single route would have answered for this item (without `instance`:
    the request as a whole has the id)."""

    type: str = Field(examples=[f"{PROBLEM_TYPE_PREFIX}account_withdrawing"])
    title: str = Field(examples=["Conflict"])
    status: int = Field(examples=[409])
    detail: str = Field(examples=["account withdrawing"])
    code: str = Field(examples=["account_withdrawing"])


class BulkScoutResult(BaseModel):
    account_id: str
    scout_id: str
    result: Literal["recorded", "duplicate", "refused"] = Field(
        description="`duplicate`: this scout id had already been recorded for the account"
    )
    status: int = Field(
        description="What the single route would answer: 201, 200, or the problem's status",
        examples=[201],
    )
    problem: ItemProblem | None = Field(default=None, description="Only when refused")


class BulkScoutsRecorded(BaseModel):
    results: list[BulkScoutResult] = Field(description="One per item, in the order sent")


@router.post(
    "/scouts",
    operation_id="receiveScouts",
    summary=f"Record up to {MAX_BULK_SCOUTS} scouts at once (once per scout id and account)",
    description=(
        "Answers 200 with one result per item, in order: `recorded` (201 on the single "
        "route), `duplicate` (200), or `refused` with the problem the single route gives: "
        "`account_not_found` (404), `account_withdrawing` (409), `account_purged` (410). "
        "Every recorded scout is durable before the answer; sending the same items again "
        "records nothing new. A body that is not valid as a whole is refused with 422, one "
        "over the API's body limit (256 KiB: 1,000 items with ids of typical length) with 413."
    ),
    response_model=BulkScoutsRecorded,
    responses=problem_responses(409, 413, 422),
    dependencies=[TAKES_IDEMPOTENCY_KEY],
)
def receive_scouts(body: BulkScoutsRequest, accounts: AccountsDep) -> Response:
    outcomes = accounts.receive_scouts(body.items())
    # `BulkScoutsRecorded` documents the answer; it is written here as plain JSON because
    # building, validating and serialising hundreds of result models cost more than the
    # rest of the route (tests/api/test_bulk_scouts.py checks the two agree).
    return Response(results_json(body.scouts, outcomes), media_type="application/json")


def results_json(items: Sequence[BulkScout], outcomes: Sequence[ScoutOutcome]) -> bytes:
    """`BulkScoutsRecorded` of these outcomes, as JSON."""
    results = []
    for item, outcome in zip(items, outcomes, strict=True):
        result: dict[str, object] = {"account_id": item.account_id, "scout_id": item.scout_id}
        if isinstance(outcome, LifecycleError):
            status = status_for(outcome)
            code = type(outcome).code
            result["result"] = "refused"
            result["status"] = status
            result["problem"] = {
                "type": f"{PROBLEM_TYPE_PREFIX}{code}",
                "title": title_for(status),
                "status": status,
                "detail": outcome.detail,
                "code": code,
            }
        else:
            result["result"] = "recorded" if outcome else "duplicate"
            result["status"] = 201 if outcome else 200
            result["problem"] = None
        results.append(result)
    return orjson.dumps({"results": results})
