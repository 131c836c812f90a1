"""Liveness and readiness, without authentication, for process supervisors and load balancers."""

from __future__ import annotations

from fastapi import APIRouter, Request

from lifecycle.api.deps import get_accounts, kafka_inspector
from lifecycle.api.problems import NotReadyError, problem_responses
from lifecycle.logs import get_logger

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database answers, and Kafka too when configured",
    responses=problem_responses(503),
)
def readyz(request: Request) -> dict[str, str]:
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
