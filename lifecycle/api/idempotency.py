"""The `Idempotency-Key` header on state-changing routes (see `lifecycle.idempotency`).

A route takes a key by listing `TAKES_IDEMPOTENCY_KEY` in its dependencies: that documents
the header in the OpenAPI and validates it (422 when malformed). `IdempotencyMiddleware`,
inside authentication, does the work for those routes: it asks the store what a request
with a key is before the route runs, replays a kept answer, refuses a reused key with another
payload (422) or one whose first request still runs (409), and keeps the first answer (any
status below 500: a server error keeps nothing, so a retry runs again).
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import Depends, Header, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lifecycle.api.problems import problem_response
from lifecycle.idempotency import Answer, IdempotencyStore, InFlight, KeyReused, Replay, Started
from lifecycle.settings import token_digest

HEADER = "Idempotency-Key"
# A Structured Field string as the draft has it ("..."), or the bare key many clients send;
# printable ASCII without quotes or backslashes, at most 255 characters.
KEY_PATTERN = r'^(?:"[ !#-\[\]-~]{1,255}"|[!#-\[\]-~]{1,255})$'
_KEY = re.compile(KEY_PATTERN)


async def idempotency_key(
    key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            pattern=KEY_PATTERN,
            description=(
                "A unique key per intended operation (IETF Idempotency-Key draft), e.g. a "
                "quoted UUID. A retry with the same key and the same payload gets the first "
                "answer again (kept 24 h by default, per token); the same key with another "
                "payload is 422 `idempotency_key_reused`; a retry while the first request "
                "still runs is 409 `idempotency_key_in_use`."
            ),
        ),
    ] = None,
) -> str | None:
    return key


TAKES_IDEMPOTENCY_KEY = Depends(idempotency_key)
REFUSALS: dict[type, tuple[int, str, str]] = {
    KeyReused: (
        422,
        "idempotency_key_reused",
        "this Idempotency-Key was sent with another request",
    ),
    InFlight: (409, "idempotency_key_in_use", "the first request with this Idempotency-Key runs"),
}


class IdempotencyMiddleware:
    """Answers requests with a key on the routes that take one; see the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        raw_key = headers.get(HEADER.lower())
        store: IdempotencyStore | None = getattr(
            getattr(scope["app"].state, "accounts", None), "idempotency", None
        )
        matched = _matching_route(scope["app"], scope) if raw_key else None
        if raw_key is None or not _KEY.match(raw_key) or store is None or matched is None:
            await self.app(scope, receive, send)  # malformed keys are the route's 422
            return
        path_params: dict[str, Any] = matched
        key = raw_key.strip('"')
        caller = token_digest(headers.get("authorization", "").partition(" ")[2].strip())
        body, receive = await _read_body(receive)
        fingerprint = store.fingerprint(scope["method"], scope["path"], body)
        begun = await run_in_threadpool(store.begin, caller, key, fingerprint)
        if isinstance(begun, Replay):
            await _send_answer(begun.answer, send)
            return
        if isinstance(begun, KeyReused | InFlight):
            status, code, detail = REFUSALS[type(begun)]
            await problem_response(Request(scope), status, code, detail)(scope, receive, send)
            return
        assert isinstance(begun, Started)
        answer = _Recorder(send)
        try:
            await self.app(scope, receive, answer.send)
        except BaseException:
            await run_in_threadpool(store.abandon, caller, key)
            raise
        kept = answer.kept()
        if kept is None or kept.status >= 500:
            await run_in_threadpool(store.abandon, caller, key)
            return
        account = _account_of(path_params, kept)
        await run_in_threadpool(store.finish, caller, key, kept, account)


def _matching_route(app: Any, scope: Scope) -> dict[str, Any] | None:
    """The path parameters of the operation taking a key that `scope` goes to (None: none).
    Read from the OpenAPI document: the operations that document the header."""
    table: list[tuple[str, re.Pattern[str]]] | None = getattr(app.state, "idempotent_routes", None)
    if table is None:
        table = [
            (method.upper(), re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$"))
            for path, item in app.openapi()["paths"].items()
            for method, operation in item.items()
            if any(
                parameter.get("in") == "header" and parameter.get("name") == HEADER
                for parameter in operation.get("parameters", [])
            )
        ]
        app.state.idempotent_routes = table
    for method, pattern in table:
        if method == scope["method"] and (found := pattern.match(scope["path"])):
            return found.groupdict()
    return None


async def _read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The whole body, and a `receive` that hands it to the app as one message."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


async def _send_answer(answer: Answer, send: Send) -> None:
    headers = [
        (b"content-type", answer.content_type.encode()),
        (b"content-length", str(len(answer.body)).encode()),
    ]
    if answer.location is not None:
        headers.append((b"location", answer.location.encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


class _Recorder:
    """Passes the response on as it goes, and keeps a copy of it."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status: int | None = None
        self.headers: Headers | None = None
        self.chunks: list[bytes] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = Headers(raw=list(message.get("headers", [])))
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))
        await self._send(message)

    def kept(self) -> Answer | None:
        if self.status is None or self.headers is None:
            return None
        return Answer(
            status=self.status,
            body=b"".join(self.chunks),
            content_type=self.headers.get("content-type", "application/json"),
            location=self.headers.get("location"),
        )


def _account_of(path_params: dict[str, Any], answer: Answer) -> UUID | None:
    """The account a kept answer concerns (the path's, or a registration's new id)."""
    value = path_params.get("account_id")
    if value is None and answer.status < 300:
        try:
            value = orjson.loads(answer.body).get("account_id")
        except (orjson.JSONDecodeError, AttributeError):
            value = None
    try:
        return None if value is None else UUID(str(value))
    except ValueError:
        return None
