"""Schemathesis runs the whole OpenAPI against the app, on both backends, every check enabled."""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.generation.modes import GenerationMode

from lifecycle.api import create_app
from lifecycle.application import Accounts
from lifecycle.settings import Settings

TOKENS = {"service": "service-token", "ops": "ops-token", "auditor": "auditor-token"}
EXAMPLES = int(os.environ.get("ST_EXAMPLES", "20"))


def token_for(path: str) -> str:
    if path.startswith("/admin/"):
        return TOKENS["ops"]
    if path.startswith("/audit/"):
        return TOKENS["auditor"]
    return TOKENS["service"]


def _operations() -> list[tuple[str, str]]:
    app = create_app(Settings(api_tokens={"0" * 64: "service"}))
    document = app.openapi()
    return [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    ]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize(("method", "path"), _operations())
def test_the_api_keeps_its_openapi(
    settings: Settings, accounts: Accounts, method: str, path: str, mode: GenerationMode
) -> None:
    app = create_app(settings, accounts)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operation = schema[path][method]
    headers = {"Authorization": f"Bearer {token_for(path)}"}

    @hypothesis_settings(
        max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        case.call_and_validate(headers=headers)

    run()
