"""Liveness and readiness, without authentication, for process supervisors and load balancers."""

from __future__ import annotations

from fastapi import APIRouter, Request

from lifecycle.api.deps import get_accounts, kafka_inspector
from lifecycle.api.metrics import waiting_workers
from lifecycle.api.problems import NotReadyError, problem_responses
from lifecycle.logs import get_logger

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="checkLiveness", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="checkReadiness",
    summary="The database answers, Kafka too when configured, and no worker waits for either",
    responses=problem_responses(503),
)
def readyz(request: Request) -> dict[str, str]:
    waiting = waiting_workers(request.app)
    if waiting:
        # The workers this process runs (Kafka off) wait out a dependency that is down.
        get_logger("lifecycle.api").warning("not_ready", waiting=waiting)
        dependencies = ", ".join(sorted(set(waiting.values())))
        raise NotReadyError(detail=f"waiting for the {dependencies}")
    accounts = get_accounts(request)
    try:
        with accounts.database.transaction(commit=False) as cursor:
            cursor.execute("SELECT 1").fetchone()
    except Exception as error:
        get_logger("lifecycle.api").warning("not_ready", error_type=type(error).__name__)
        raise NotReadyError(detail="the database does not answer") from None
    kafka = kafka_inspector(request)
    if kafka.configured:
        try:
            kafka.check()
        except Exception as error:
            get_logger("lifecycle.api").warning("not_ready", kafka_error=type(error).__name__)
            raise NotReadyError(detail="Kafka does not answer") from None
    return {"status": "ready"}
