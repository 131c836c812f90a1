"""Bearer-token authentication with one role per token.

Configuration holds only sha256 digests of the tokens (`Settings.api_tokens`), so a leaked
configuration file opens nothing. A server started without tokens generates one per role
for that run and prints them once to stdout; logs only say that it happened.
"""

from __future__ import annotations

import functools
import hmac
import re
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Annotated, TextIO

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from lifecycle.api.problems import AuthenticationError, error_response
from lifecycle.errors import LifecycleError, PermissionDeniedError, StartupError
from lifecycle.logs import get_logger
from lifecycle.settings import ROLES, Role, Settings, generate_tokens, token_digest

BEARER_DESCRIPTION = (
    "One token per role (service, scout, ops, auditor): `Authorization: Bearer <token>`."
)


@dataclass(frozen=True)
class Caller:
    """Who is calling, as far as the service knows: only the role of their token."""

    role: Role


def role_for_token(token: str, token_roles: Mapping[str, Role]) -> Role | None:
    """The role of a presented token, comparing digests in constant time against every entry."""
    presented = token_digest(token)
    found: Role | None = None
    for digest, role in token_roles.items():
        if hmac.compare_digest(presented, digest):
            found = role
    return found


# The role each protected surface needs: the routers and the middleware both read it here.
ROLE_BY_PREFIX: dict[str, Role] = {"/v1/": "service", "/admin/v1/": "ops", "/audit/v1/": "auditor"}
# Routes a narrower role may call too: the scout service records scouts, and nothing else (no
# member read, no withdrawal). Matched on method and path; the last segment is fixed.
SCOUT_ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("POST", re.compile(r"^/v1/scouts$")),
    ("POST", re.compile(r"^/v1/accounts/[^/]+/scouts$")),
)


def role_for_path(path: str) -> Role | None:
    """The role a path needs; None for the open routes (health, metrics, docs)."""
    for prefix, role in ROLE_BY_PREFIX.items():
        if path.startswith(prefix):
            return role
    return None


def roles_for(method: str, path: str) -> frozenset[Role]:
    """Every role that may call this method on this path (empty: an open route)."""
    role = role_for_path(path)
    if role is None:
        return frozenset()
    if any(method == m and pattern.match(path) for m, pattern in SCOUT_ROUTES):
        return frozenset({role, "scout"})
    return frozenset({role})


def authenticate(
    authorization: str | None, token_roles: Mapping[str, Role], roles: Collection[Role]
) -> Role:
    """The caller's role from an `Authorization` header; 401, or 403 unless it is in `roles`."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("a bearer token is required")
    found = role_for_token(token.strip(), token_roles)
    if found is None:
        raise AuthenticationError("the bearer token is not valid", invalid_token=True)
    if found not in roles:
        needed = " or ".join(sorted(roles))
        raise PermissionDeniedError(detail=f"this route needs the {needed} role")
    return found


class AuthenticationMiddleware:
    """Authenticates every protected request before anything else reads it: an anonymous
    caller gets 401 whatever the body, and so learns nothing about validation rules."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        roles = roles_for(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if roles:
            try:
                caller = authenticate(
                    Headers(scope=scope).get("authorization"), scope["app"].state.token_roles, roles
                )
            except LifecycleError as error:
                await error_response(Request(scope), error)(scope, receive, send)
                return
            scope.setdefault("state", {})["caller_role"] = caller
        await self.app(scope, receive, send)


class RoleBearer(HTTPBearer):
    """Bearer auth for one role as a single dependency: it documents the scheme (a
    `SecurityBase`, so the OpenAPI lists it) and answers with the caller the middleware
    admitted. One dependant per route, not two (a role check over an `HTTPBearer`
    sub-dependency): FastAPI's per-request cost grows with each (`python -m bench.route_costs`).
    """

    def __init__(self, role: Role) -> None:
        super().__init__(auto_error=False, scheme_name="bearer", description=BEARER_DESCRIPTION)
        self.role = role

    async def __call__(self, request: Request) -> Caller:  # type: ignore[override]
        admitted = request.scope.get("state", {}).get("caller_role")
        if admitted is not None and admitted in roles_for(request.method, request.scope["path"]):
            return Caller(role=admitted)
        # A route outside the middleware's prefixes: authenticate here (401/403 raised).
        credentials = await super().__call__(request)
        header = f"Bearer {credentials.credentials}" if credentials else None
        return Caller(role=authenticate(header, request.app.state.token_roles, {self.role}))


@functools.cache
def require_role(role: Role) -> RoleBearer:
    """The caller the middleware admitted for this route's `role` (documents bearer auth).
    One instance per role, so a route asking for it twice (router and an actor dependency)
    has it solved once."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    return RoleBearer(role)


ServiceCaller = Annotated[Caller, Depends(require_role("service"))]
OpsCaller = Annotated[Caller, Depends(require_role("ops"))]
AuditorCaller = Annotated[Caller, Depends(require_role("auditor"))]


def with_generated_tokens(settings: Settings, stream: TextIO | None = None) -> Settings:
    """Settings with API tokens: as given, or (embedded only) freshly generated ones printed once.

    A production database without configured tokens refuses to start (`StartupError`), as it
    does without a master key: generated tokens would land in a log stream, and every
    replica would have its own. Embedded (the newcomer's first run), when
    `settings.api_tokens` is empty, one token per role is generated for this run,
    written to `stream` (stdout by default) and never logged; the returned settings hold
    only their digests. The CLI may call this before `create_app`; `create_app` calls it too,
    so a server never starts with an open door.
    """
    if settings.api_tokens:
        return settings
    if not settings.is_embedded:
        raise StartupError(
            detail="LIFECYCLE_API_TOKENS is required outside the embedded default "
            '(JSON {"<sha256 hex of a token>": "<role>"})'
        )
    tokens = generate_tokens()
    get_logger("lifecycle.api").warning(
        "api_tokens_generated", roles=sorted(tokens), reason="none configured"
    )
    print_generated_tokens(tokens, sys.stdout if stream is None else stream)
    digests: dict[str, Role] = {token_digest(token): role for role, token in tokens.items()}
    return settings.model_copy(update={"api_tokens": digests})


def print_generated_tokens(tokens: Mapping[Role, str], stream: TextIO) -> None:
    lines = [
        "",
        "No API tokens configured (LIFECYCLE_API_TOKENS); generated for this run only:",
        *(f"    {role:<8} {token}" for role, token in tokens.items()),
        "Send them as `Authorization: Bearer <token>`. They are shown once and not logged.",
        "",
    ]
    stream.write("\n".join(lines) + "\n")
    stream.flush()
