"""Liveness and readiness, without authentication, for process supervisors and load balancers."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from lifecycle.api.deps import inspector_of
from lifecycle.api.metrics import waiting_workers
from lifecycle.api.problems import error_response, problem_responses
from lifecycle.api.readiness import Readiness
from lifecycle.errors import LifecycleError, NotReadyError
from lifecycle.services.pipeline import PipelineReadings

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
async def readyz(request: Request) -> dict[str, str]:
    return ready(request.app)


def ready(app: FastAPI) -> dict[str, str]:
    """/readyz's answer, from memory: the dependencies are checked by background threads
    (`lifecycle.api.readiness`), so no probe ever waits for the database or a broker, nor
    takes a request worker from the members' routes. NotReadyError when not ready."""
    waiting = waiting_workers(app)
    if waiting:
        # The workers this process runs (Kafka off) wait out a dependency that is down.
        dependencies = ", ".join(sorted(set(waiting.values())))
        raise NotReadyError(detail=f"waiting for the {dependencies}")
    readiness: Readiness | None = getattr(app.state, "readiness", None)
    if readiness is None:
        raise NotReadyError(detail="the service is starting or stopping")
    problem = readiness.problem()
    if problem is not None:
        raise NotReadyError(detail=problem)
    return {"status": "ready"}


class ProbeMiddleware:
    """Answers `GET /healthz` and `GET /readyz` (without a query) before routing, metrics and
    authentication: a probe costs a few microseconds of the event loop, so a burst of them
    never delays a member's request. The routes stay declared for the OpenAPI document, and
    answer anything else (a query string is refused there, as everywhere)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or path not in ("/healthz", "/readyz")
            or scope.get("query_string")
        ):
            await self.app(scope, receive, send)
            return
        try:
            body = healthz() if path == "/healthz" else ready(scope["app"])
        except LifecycleError as error:
            await error_response(Request(scope), error)(scope, receive, send)
            return
        await JSONResponse(body)(scope, receive, send)


def readiness_checks(app: FastAPI) -> dict[str, Callable[[], None]]:
    """What /readyz waits for: the database, and Kafka when configured (the inspector is
    looked up at each check, so a test may swap it)."""

    def database() -> None:
        PipelineReadings(app.state.accounts).check_database()

    def kafka() -> None:
        inspector_of(app).check()

    checks: dict[str, Callable[[], None]] = {"the database": database}
    if inspector_of(app).configured:
        checks["Kafka"] = kafka
    return checks
