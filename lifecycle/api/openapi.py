"""The OpenAPI document as clients should read it: every problem as `application/problem+json`.

FastAPI documents additional responses under `application/json` and adds its own validation
error schema to every route that takes input; the service answers every 4xx and 5xx with an
RFC 9457 problem instead. `problem_openapi` rewrites the generated document once, from the
same `Problem` model the handlers serialise, so the two cannot drift.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from lifecycle.api.auth import role_for_path
from lifecycle.api.problems import PROBLEM_MEDIA_TYPE, Problem, title_for

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
# What the service's own layers answer for any operation, whatever its route declares:
# the query is checked against the route (422), protected routes need a token (401, 403) and
# the database (503); a body must be JSON text within the size limit (400, 413).
ANY_OPERATION = {422: "The request does not match this operation (an unknown query parameter)"}
PROTECTED = {
    401: "No bearer token, or an unknown one",
    403: "The token's role may not use this operation",
    503: "The database or Kafka is not available; retry later",
}
WITH_BODY = {
    400: "The body is not JSON text (not UTF-8, or not parseable)",
    413: "The body is over the size limit",
}
# FastAPI's own validation schemas, which no response of the service uses.
UNUSED_SCHEMAS = ("HTTPValidationError", "ValidationError")


def install_problem_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problem_openapi(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def problem_openapi(document: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem
    for path, item in document.get("paths", {}).items():
        for operation in item.values():
            added = dict(ANY_OPERATION)
            if role_for_path(path) is not None:
                added.update(PROTECTED)
            if "requestBody" in operation:
                added.update(WITH_BODY)
            responses = operation.setdefault("responses", {})
            for status, description in added.items():
                responses.setdefault(str(status), {"description": description})
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400:
                    response.setdefault("description", title_for(int(status)))
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}}
    for name in UNUSED_SCHEMAS:
        schemas.pop(name, None)
    return document
