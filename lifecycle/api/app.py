"""The HTTP application: `create_app(settings)` builds it; nothing happens at import."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from uuid import uuid4

import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lifecycle import tracing
from lifecycle.api.auth import AuthenticationMiddleware, with_generated_tokens
from lifecycle.api.deps import ApiState
from lifecycle.api.idempotency import IdempotencyMiddleware
from lifecycle.api.metrics import install_metrics
from lifecycle.api.metrics import router as metrics_router
from lifecycle.api.openapi import install_problem_openapi
from lifecycle.api.problems import (
    install_problem_handlers,
    problem_response,
    unexpected_error_response,
)
from lifecycle.api.readiness import Readiness, Refresher
from lifecycle.api.routes import accounts as accounts_routes
from lifecycle.api.routes import admin, audit, data_exports, health, receipts, scouts
from lifecycle.api.routes.health import ProbeMiddleware, readiness_checks
from lifecycle.application import Accounts
from lifecycle.bootstrap import build_accounts
from lifecycle.erasure.process import ErasureProcess
from lifecycle.logs import get_logger
from lifecycle.settings import Settings

__all__ = ["RequestContextMiddleware", "create_app", "with_generated_tokens"]

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming request id is kept only if it is a short token that is safe to log and echo.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
# Request bodies are small JSON documents; anything bigger is refused with 413.
MAX_BODY_BYTES = 256 * 1024
TOO_LARGE_DETAIL = f"request bodies are limited to {MAX_BODY_BYTES} bytes"


def create_app(
    settings: Settings, accounts: Accounts | None = None, erasure: ErasureProcess | None = None
) -> FastAPI:
    """The member-facing HTTP API.

    With `accounts` given (and `erasure`, the process the workers run), the app uses them and
    leaves closing them to the caller. Without,
    the app builds its own from `settings` when it starts (lifespan) and closes it when
    it stops. Settings without API tokens get generated ones (see `with_generated_tokens`).
    """
    settings = with_generated_tokens(settings)
    app = FastAPI(
        title="lifecycle",
        version=_package_version(),
        description="Member accounts of the job-change platform, from registration to erasure.",
        lifespan=_lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.token_roles = dict(settings.api_tokens)
    app.state.accounts = accounts
    app.state.erasure = erasure
    app.state.api = None  # built in the lifespan (`ApiState.start`)
    install_problem_handlers(app)
    app.router.routes.extend(_api_routes())
    install_metrics(app)
    install_problem_openapi(app)
    # Routes FastAPI adds itself (docs, OpenAPI) do not record their route in the scope.
    fixed_paths = frozenset(
        path for route in app.routes if "{" not in (path := getattr(route, "path", "{"))
    )
    # The last added runs first: request id and access log wrap everything else, then
    # authentication, before the body is read or limited; idempotency keys innermost.
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=MAX_BODY_BYTES)
    app.add_middleware(AuthenticationMiddleware)
    app.add_middleware(ProbeMiddleware)
    app.add_middleware(RequestContextMiddleware, fixed_paths=fixed_paths)
    if tracing.enabled():
        # Outermost: a request's span (W3C traceparent continued) is current for all of it.
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, tracer_provider=tracing.provider())
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    log = get_logger("lifecycle.api")
    settings: Settings = app.state.settings
    readiness: Readiness | None = None
    gauges: Refresher[Any] | None = None
    built: Accounts | None = None
    if app.state.accounts is None:
        built = await run_in_threadpool(build_accounts, settings)
        app.state.accounts = built
    try:
        # Every table the routes use is made here, once: no request runs DDL.
        app.state.api = await run_in_threadpool(
            ApiState.start, app.state.accounts, settings, app.state.erasure
        )
        # /readyz and /metrics answer from what these threads last found, never from a request.
        readiness = Readiness(readiness_checks(app))
        await run_in_threadpool(readiness.refresh_first)
        app.state.readiness = readiness.start()
        gauges = app.state.state_collector.refresher()
        log.info("api_started", roles=sorted(set(app.state.token_roles.values())))
        yield
    finally:
        if readiness is not None:
            readiness.stop()
        if gauges is not None:
            gauges.stop()
        app.state.readiness = None
        app.state.api = None
        if built is not None:
            app.state.accounts = None
            await run_in_threadpool(built.close)
        log.info("api_stopped")


class RequestContextMiddleware:
    """Gives each request an id (bound into every log line, echoed in `X-Request-ID`) and
    writes one access log line: method, route template, status, duration. Never a body,
    never a query string.

    It also answers for exceptions nothing else handled, so that those responses carry the
    request id and are logged like any other.
    """

    def __init__(self, app: ASGIApp, fixed_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.fixed_paths = fixed_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status_code = 500
        response_started = False

        async def send_with_request_id(message: Message) -> None:
            nonlocal status_code, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status_code = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_request_id)
            except Exception as error:
                if response_started:
                    raise
                response = unexpected_error_response(Request(scope, receive), error)
                await response(scope, receive, send_with_request_id)
            finally:
                get_logger("lifecycle.api.access").info(
                    "request",
                    method=scope["method"],
                    route=self._route_template(scope),
                    status=status_code,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )

    def _route_template(self, scope: Scope) -> str:
        """The matched route's template; never a raw path, which may hold anything typed."""
        template = getattr(scope.get("route"), "path", None)
        if isinstance(template, str):
            return template
        path = scope.get("path")
        return path if path in self.fixed_paths else "<unmatched>"


class BodyLimitMiddleware:
    """Refuses request bodies over `max_body_bytes` with a 413 problem.

    A declared Content-Length over the limit is refused before the app runs; a body that
    grows past it while being read fails the read, which the problem handlers answer.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            response = problem_response(Request(scope), 413, "content_too_large", TOO_LARGE_DETAIL)
            await response(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, TOO_LARGE_DETAIL)
            return message

        await self.app(scope, receive_within_limit, send)


async def reject_unknown_query_parameters(request: Request) -> None:
    """A query parameter the route does not declare is refused (422), as the OpenAPI says:
    a misspelt filter must not silently return everything."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    if set(request.query_params) - set(_query_names(route.dependant)):
        raise RequestValidationError(
            [{"loc": ("query",), "msg": "unknown query parameter", "type": "extra_forbidden"}]
        )


def _query_names(dependant: Dependant) -> Iterator[str]:
    yield from (field.alias for field in dependant.query_params)
    for dependency in dependant.dependencies:
        yield from _query_names(dependency)


def _incoming_request_id(scope: Scope) -> str | None:
    value = Headers(scope=scope).get(REQUEST_ID_HEADER)
    if value and SANE_REQUEST_ID.fullmatch(value):
        return value
    return None


@functools.cache
def _api_routes() -> tuple[BaseRoute, ...]:
    """Every route of the API, built once per process and shared by every app made in it.

    FastAPI builds an included router's routes (their dependencies, their models) on an app's
    first request, 25-50 ms of CPU, and would build them again for each app; the test suite
    makes an app per test. Sharing them is sound because a route reaches its app only through
    the request; the one thing it costs is `app.dependency_overrides`, which nothing uses and
    which does not reach these routes."""
    router = APIRouter(dependencies=[Depends(reject_unknown_query_parameters)])
    for included in (
        health.router,
        accounts_routes.router,
        data_exports.router,
        scouts.router,
        admin.router,
        audit.router,
        receipts.ops_router,
        receipts.audit_router,
        receipts.public_router,
        metrics_router,
    ):
        router.include_router(included)
    return tuple(router.routes)


@functools.cache  # a scan of the installed distributions, the same for every app
def _package_version() -> str:
    try:
        return version("lifecycle")
    except PackageNotFoundError:
        return "0.0.0"
