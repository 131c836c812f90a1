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

from lifecycle.api.problems import PROBLEM_MEDIA_TYPE, Problem, title_for

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
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
    for item in document.get("paths", {}).values():
        for operation in item.values():
            for status, response in operation.get("responses", {}).items():
                if status.isdigit() and int(status) >= 400:
                    response.setdefault("description", title_for(int(status)))
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}}
    for name in UNUSED_SCHEMAS:
        schemas.pop(name, None)
    return document
