"""Member accounts, for the platform's own services (role `service`).

Handlers are plain functions: the application does blocking I/O, so FastAPI runs them in
its thread pool. The registration, the hottest route, is a coroutine that hands only the
command to the thread pool: FastAPI validates a plain function's response in the thread pool
too, a second hop per request (`python -m bench.route_costs`). Errors are the application's
`LifecycleError`s, turned into problem documents by `lifecycle.api.problems`.
"""

from __future__ import annotations

from functools import partial
from uuid import UUID

from fastapi import APIRouter, Depends, Response, status
from starlette.concurrency import run_in_threadpool

from lifecycle.account_terms import GIFT_AMOUNT_JPY, GIFT_KIND, WITHDRAWAL_REASON_DETAILS
from lifecycle.api.account_view import AccountOut
from lifecycle.api.auth import require_role
from lifecycle.api.data_export_view import export_path
from lifecycle.api.deps import (
    AccountId,
    AccountsDep,
    DataExportsDep,
    ErasureStatusDep,
    WithdrawalsDep,
)
from lifecycle.api.idempotency import TAKES_IDEMPOTENCY_KEY
from lifecycle.api.models import (
    AccountCreated,
    ErasureStatusOut,
    Gift,
    GiftClaimRequest,
    PreferencesChanged,
    PreferencesPatch,
    RegisterRequest,
    ScoutRecorded,
    ScoutRequest,
    WithdrawalAccepted,
    WithdrawalPreview,
    WithdrawalRequest,
    api_parts,
)
from lifecycle.api.problems import problem_responses

router = APIRouter(
    prefix="/v1",
    tags=["accounts"],
    dependencies=[Depends(require_role("service"))],
    responses=problem_responses(401, 403),
)


# What any route on an existing account may answer besides its own outcomes.
ON_ACCOUNT = (404, 410, 422)


def account_path(account_id: UUID) -> str:
    return f"/v1/accounts/{account_id}"


@router.post(
    "/accounts",
    operation_id="registerAccount",
    status_code=status.HTTP_201_CREATED,
    summary="Register a member",
    responses=problem_responses(409, 422),
    dependencies=[TAKES_IDEMPOTENCY_KEY],
)
async def register(
    body: RegisterRequest, accounts: AccountsDep, response: Response
) -> AccountCreated:
    account_id = await run_in_threadpool(partial(accounts.register, **body.to_domain()))
    response.headers["Location"] = account_path(account_id)
    return AccountCreated(account_id=account_id)


@router.get(
    "/accounts/{account_id}",
    operation_id="getAccount",
    summary="The account's current profile and status",
    responses=problem_responses(404, 410),
)
def get_account(account_id: AccountId, accounts: AccountsDep) -> AccountOut:
    return AccountOut.of(accounts.get_account(account_id))


@router.patch(
    "/accounts/{account_id}/preferences",
    operation_id="editPreferences",
    summary="Edit profile, work history, desired conditions or notifications",
    description=(
        "Send any subset of the parts. Fields left out of `profile`, `desired` and "
        "`notifications` keep their values; lists are replaced as a whole. Answers with the "
        "parts that changed: an empty list when nothing did, and then nothing is recorded."
    ),
    responses=problem_responses(*ON_ACCOUNT, 409),
    dependencies=[TAKES_IDEMPOTENCY_KEY],
)
def edit_preferences(
    account_id: AccountId, body: PreferencesPatch, accounts: AccountsDep
) -> PreferencesChanged:
    changed = accounts.edit_preferences(account_id, **body.domain_parts())
    return PreferencesChanged.model_validate({"changed": api_parts(changed)})


@router.post(
    "/accounts/{account_id}/scouts",
    operation_id="receiveScout",
    status_code=status.HTTP_201_CREATED,
    summary="Record a scout the member received (once per scout id)",
    responses={
        200: {"model": ScoutRecorded, "description": "This scout id was already recorded"},
        **problem_responses(*ON_ACCOUNT, 409),
    },
    dependencies=[TAKES_IDEMPOTENCY_KEY],
)
def receive_scout(
    account_id: AccountId, body: ScoutRequest, accounts: AccountsDep, response: Response
) -> ScoutRecorded:
    recorded = accounts.receive_scout(
        account_id, scout_id=body.scout_id, company_id=body.company_id, job_id=body.job_id
    )
    if not recorded:
        response.status_code = status.HTTP_200_OK
    return ScoutRecorded(scout_id=body.scout_id, recorded=recorded)


@router.post(
    "/accounts/{account_id}/gift-claim",
    operation_id="claimGift",
    status_code=status.HTTP_201_CREATED,
    summary="Claim the hiring gift for a start at a company that scouted the member",
    responses=problem_responses(*ON_ACCOUNT, 409),
    dependencies=[TAKES_IDEMPOTENCY_KEY],
)
def claim_gift(account_id: AccountId, body: GiftClaimRequest, accounts: AccountsDep) -> Gift:
    accounts.claim_gift(account_id, company_id=body.company_id, start_date=body.start_date)
    return Gift(
        kind=GIFT_KIND,
        amount_jpy=GIFT_AMOUNT_JPY,
        company_id=body.company_id,
        start_date=body.start_date,
    )


@router.get(
    "/accounts/{account_id}/withdrawal-preview",
    operation_id="previewWithdrawal",
    summary="What the member loses by withdrawing now",
    responses=problem_responses(404, 410),
)
def withdrawal_preview(
    account_id: AccountId, accounts: AccountsDep, exports: DataExportsDep
) -> WithdrawalPreview:
    preview = accounts.withdrawal_preview(account_id)
    ready = exports.latest_ready(account_id)
    download = f"{export_path(account_id, ready.id)}/download" if ready else None
    return WithdrawalPreview.model_validate(
        {**preview, "data_export_ready": ready is not None, "data_export": download}
    )


@router.post(
    "/accounts/{account_id}/withdrawal",
    operation_id="requestWithdrawal",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Request withdrawal; erasure follows",
    description=(
        "Idempotent: asking again answers 202 and records nothing new. With reason "
        "`hired_via_platform` and no gift claimed, `acknowledge_gift_loss` must be true. "
        "`reason_details` must belong to the reason: "
        + "; ".join(
            f"{reason}: {', '.join(details) or 'none'}"
            for reason, details in WITHDRAWAL_REASON_DETAILS.items()
        )
        + " (otherwise 422 `reason_detail_invalid`)."
    ),
    responses=problem_responses(*ON_ACCOUNT, 409),
    dependencies=[TAKES_IDEMPOTENCY_KEY],
)
def request_withdrawal(
    account_id: AccountId,
    body: WithdrawalRequest,
    withdrawals: WithdrawalsDep,
    response: Response,
) -> WithdrawalAccepted:
    withdrawals.request(
        account_id,
        reason=body.reason.value,
        reason_details=list(body.reason_details),
        comment=body.comment,
        acknowledge_gift_loss=body.acknowledge_gift_loss,
    )
    erasure = f"{account_path(account_id)}/erasure"
    response.headers["Location"] = erasure
    return WithdrawalAccepted(erasure=erasure)


@router.get(
    "/accounts/{account_id}/erasure",
    operation_id="getErasureStatus",
    summary="Where erasure stands: requested, each service's confirmation, purged, overdue",
    responses=problem_responses(404),
)
def erasure_status(account_id: AccountId, erasure: ErasureStatusDep) -> ErasureStatusOut:
    return ErasureStatusOut.model_validate(erasure.status(account_id).as_dict())
