"""RFC 9457 problem documents for every error the HTTP API returns.

One handler maps the service's `LifecycleError` hierarchy to statuses; the others turn
request validation failures, routing errors and anything unexpected into the same shape.
A problem never echoes what the client sent: input may be an e-mail address or text a
member wrote, and `instance` names the request by its id rather than by its path.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lifecycle.errors import (
    ConflictError,
    GiftNotEligibleError,
    GoneError,
    InvalidCommandError,
    KafkaUnavailableError,
    KeyDestroyedError,
    LifecycleError,
    NotFoundError,
    NotReadyError,
    PermissionDeniedError,
)
from lifecycle.kafka.inspector import BrokerUnavailableError
from lifecycle.logs import get_logger
from lifecycle.probe import PROBLEM_TYPE_PREFIX
from lifecycle.recorders import WriteOutcomeUnknownError

PROBLEM_MEDIA_TYPE = "application/problem+json"
REQUEST_URN_PREFIX = "urn:lifecycle:request:"
# A problem stays a few kilobytes whatever the request: at most this many validation issues.
MAX_ISSUES = 20


class AuthenticationError(LifecycleError):
    """No bearer token, or one the service does not know."""

    code = "unauthenticated"

    def __init__(self, detail: str | None = None, *, invalid_token: bool = False) -> None:
        super().__init__(detail=detail)
        challenge = 'Bearer realm="lifecycle"'
        if invalid_token:
            challenge += ', error="invalid_token"'
        self.headers = {"WWW-Authenticate": challenge}


# Most specific first is not required: the lookup walks each error's MRO.
STATUS_BY_ERROR: dict[type[LifecycleError], int] = {
    NotFoundError: 404,
    GoneError: 410,
    KeyDestroyedError: 410,
    ConflictError: 409,
    InvalidCommandError: 422,
    GiftNotEligibleError: 422,
    AuthenticationError: 401,
    PermissionDeniedError: 403,
    NotReadyError: 503,
}


# RFC 9110 names; Python 3.11's http.HTTPStatus still has the older phrases.
CURRENT_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document; `code` is stable, `detail` is for people."""

    type: str = Field(examples=[f"{PROBLEM_TYPE_PREFIX}account_not_found"])
    title: str = Field(examples=["Not Found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["account not found"])
    code: str = Field(examples=["account_not_found"])
    instance: str = Field(examples=[f"{REQUEST_URN_PREFIX}4f1c2a0e9b7d4e0f8a6b5c4d3e2f1a0b"])
    reason: str | None = Field(
        default=None,
        description="A finer code than `code`, when there is one.",
        examples=["company_not_scouted"],
    )
    errors: list[ValidationIssue] | None = Field(
        default=None,
        description="For 422 from request validation: where and what, no values, "
        f"at most {MAX_ISSUES}.",
    )
    errors_omitted: int | None = Field(
        default=None, description="How many more issues were found than `errors` lists."
    )


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting the problems a route may return."""
    return {status: {"model": Problem, "description": title_for(status)} for status in statuses}


def request_id_of(request: Request) -> str | None:
    value = getattr(request.state, "request_id", None)
    return value if isinstance(value, str) else None


def problem_response(
    request: Request,
    status: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    reason: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    errors_omitted: int | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": f"{PROBLEM_TYPE_PREFIX}{code}",
        "title": title_for(status),
        "status": status,
        "detail": detail,
        "code": code,
        "instance": f"{REQUEST_URN_PREFIX}{request_id_of(request) or 'unknown'}",
    }
    if reason is not None:
        body["reason"] = reason
    if errors is not None:
        body["errors"] = errors
    if errors_omitted is not None:
        body["errors_omitted"] = errors_omitted
    return ProblemResponse(body, status_code=status, headers=dict(headers or {}))


def status_for(error: LifecycleError) -> int:
    for cls in type(error).__mro__:
        status = STATUS_BY_ERROR.get(cls)
        if status is not None:
            return status
    return 500


async def lifecycle_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LifecycleError)
    return error_response(request, exc)


def error_response(request: Request, exc: LifecycleError) -> Response:
    """The problem document for one of the service's errors."""
    status = status_for(exc)
    if status >= 500 and not isinstance(exc, NotReadyError):
        # An error of ours that no client input explains (configuration, startup).
        get_logger("lifecycle.api").error("request_failed", code=exc.code)
        return problem_response(request, 500, exc.code, "the service could not do this")
    # `code` names the kind of error (the class's code, what clients branch on); when the
    # domain said more precisely why (GiftNotEligibleError("company_not_scouted")), that
    # finer code goes in `reason`.
    code = type(exc).code
    reason = exc.code if exc.code != code else None
    headers = getattr(exc, "headers", None)
    return problem_response(request, status, code, exc.detail, headers=headers, reason=reason)


async def broker_unavailable_handler(request: Request, exc: Exception) -> Response:
    """The Kafka adapter's own exception, answered as the API's 503 problem."""
    assert isinstance(exc, BrokerUnavailableError)
    return await lifecycle_error_handler(request, KafkaUnavailableError(detail=str(exc)))


async def validation_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    found = exc.errors()
    return problem_response(
        request,
        422,
        "invalid_request",
        "the request is not valid; see errors",
        errors=[_issue(error) for error in found[:MAX_ISSUES]],
        errors_omitted=max(0, len(found) - MAX_ISSUES) or None,
    )


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else title_for(status)
    return problem_response(
        request, status, _code_for_status(status), detail, headers=exc.headers or None
    )


async def unhandled_error_handler(request: Request, exc: Exception) -> Response:
    """Last resort: a 500 (or 503 while the database is away) and no traceback to the client."""
    return unexpected_error_response(request, exc)


def unexpected_error_response(request: Request, exc: BaseException) -> Response:
    log = get_logger("lifecycle.api")
    if isinstance(exc, WriteOutcomeUnknownError):
        # The database went away mid-commit and stayed away while we asked what happened.
        log.error("write_outcome_unknown", error_type=type(exc).__name__)
        return problem_response(
            request,
            503,
            "write_outcome_unknown",
            "the database went away while storing; whether it was stored is not known yet: "
            "retry with the same Idempotency-Key, or read before writing again",
        )
    if isinstance(exc, OperationalError | InterfaceError):
        log.error("database_unavailable", error_type=type(exc).__name__)
        return problem_response(
            request, 503, "database_unavailable", "the database is not available; retry later"
        )
    log.error("unhandled_error", error_type=type(exc).__name__, exc_info=exc)
    return problem_response(
        request, 500, "internal_error", "the service failed to handle this request"
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(LifecycleError, lifecycle_error_handler)
    app.add_exception_handler(BrokerUnavailableError, broker_unavailable_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_exception_handler(Exception, unhandled_error_handler)


def title_for(status: int) -> str:
    if status in CURRENT_TITLES:
        return CURRENT_TITLES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _code_for_status(status: int) -> str:
    if status == 401:
        return AuthenticationError.code
    if status == 403:
        return PermissionDeniedError.code
    return title_for(status).lower().replace(" ", "_").replace("-", "_")


def _issue(error: Any) -> dict[str, Any]:
    """Where and what, never the value: no `input`, no `ctx`, no message quoting input, and no
    unknown key's name (a client may send anything as a key)."""
    loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
    kind = str(error.get("type", "value_error"))
    msg = str(error.get("msg", "invalid value"))
    if kind == "extra_forbidden":
        return {"loc": loc[:-1], "msg": "unknown field", "type": kind}
    value = error.get("input")
    if isinstance(value, str) and len(value) >= 3 and value in msg:
        msg = f"invalid value ({kind})"
    return {"loc": loc, "msg": msg, "type": kind}
