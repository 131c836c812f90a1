"""The two HTTP targets of the HTTP case, each run as uvicorn with the same worker processes.

    python -m bench.http_server app  --port P --schema S --master-key K [--workers N]
    python -m bench.http_server bare --port P --schema S --row-size N --scout-row-size M

`app` is the service as `lifecycle serve` runs it (create_app, logging at INFO to stderr,
uvicorn without access log). `bare` is the rawest FastAPI app that does the same durable
work, with psycopg from a pool, in plain (threadpool) routes: `POST /v1/accounts` parses the
body and INSERTs one row of the registration's stored size into a table shaped like the
event store; `POST /v1/scouts` parses the items and INSERTs one row per scout, of a
ScoutReceived event's stored size, in one multi-row INSERT (once per scout id and member).
Both targets are uvicorn app factories, so that `--workers N` runs N processes of either.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any
from uuid import uuid4

import uvicorn

from lifecycle.workers import run_server_processes

ROW_TOPIC = "lifecycle.domain:Account.Registered"
SCOUT_TOPIC = "lifecycle.domain:Account.ScoutReceived"
# The parsed command line, for the factory that runs in each worker process.
ARGS_VARIABLE = "BENCH_HTTP_SERVER_ARGS"


def bare_app(args: dict[str, Any], database_url: str) -> Any:
    from fastapi import FastAPI, status
    from psycopg_pool import ConnectionPool

    schema, row_size, scout_row_size = args["schema"], args["row_size"], args["scout_row_size"]
    pool = ConnectionPool(
        database_url,
        min_size=min(10, args["pool_size"]),
        max_size=args["pool_size"],
        kwargs={"autocommit": True},
        open=True,
    )
    statement = (
        f"INSERT INTO {schema}.raw_events (originator_id, originator_version, topic, state) "
        "VALUES (%s, 1, %s, %s)"
    )
    scouts_insert = (
        f"INSERT INTO {schema}.raw_scouts (originator_id, scout_id, topic, state) VALUES "
    )
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/accounts", status_code=status.HTTP_201_CREATED)
    def register(body: dict[str, Any]) -> dict[str, str]:
        account_id = uuid4()
        state = json.dumps(body).encode().ljust(row_size)[:row_size]
        with pool.connection() as conn:
            conn.execute(statement, (account_id, ROW_TOPIC, state))
        return {"account_id": str(account_id)}

    @app.post("/v1/scouts")
    def scouts(body: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        items: list[dict[str, Any]] = body["scouts"]
        params: list[Any] = []
        for item in items:
            state = json.dumps(item).encode().ljust(scout_row_size)[:scout_row_size]
            params += [item["account_id"], item["scout_id"], SCOUT_TOPIC, state]
        values = ",".join(["(%s, %s, %s, %s)"] * len(items))
        with pool.connection() as conn:
            conn.execute(
                scouts_insert + values + " ON CONFLICT (originator_id, scout_id) DO NOTHING",
                params,
            )
        return {
            "results": [
                {
                    "account_id": item["account_id"],
                    "scout_id": item["scout_id"],
                    "result": "recorded",
                    "status": 201,
                    "problem": None,
                }
                for item in items
            ]
        }

    return app


def service_app(args: dict[str, Any], database_url: str) -> Any:
    from bench.workload import SERVICE_TOKEN, bench_settings, open_accounts
    from lifecycle.api.app import create_app
    from lifecycle.logs import configure_logging
    from lifecycle.settings import token_digest

    settings = bench_settings(database_url, args["schema"], args["master_key"]).model_copy(
        update={
            "log_level": "INFO",
            "api_tokens": {token_digest(SERVICE_TOKEN): "service"},
        }
    )
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings, open_accounts(settings))


def factory() -> Any:
    """uvicorn's app factory, called in each worker process."""
    args: dict[str, Any] = json.loads(os.environ[ARGS_VARIABLE])
    database_url = os.environ["LIFECYCLE_DATABASE_URL"]
    if args["target"] == "app":
        return service_app(args, database_url)
    return bare_app(args, database_url)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_server")
    parser.add_argument("target", choices=("app", "bare"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--master-key", default="")
    parser.add_argument("--row-size", type=int, default=964)
    parser.add_argument("--scout-row-size", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    # The service's own pool: POSTGRES_POOL_SIZE 10 + POSTGRES_MAX_OVERFLOW 20.
    parser.add_argument("--pool-size", type=int, default=30)
    args = parser.parse_args()
    os.environ[ARGS_VARIABLE] = json.dumps(vars(args))
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": args.port,
        "log_config": None,
        "access_log": False,
    }
    if args.workers == 1:
        uvicorn.run("bench.http_server:factory", factory=True, **options)
    else:
        # As `lifecycle serve --workers N` runs them (TCP_NODELAY on every connection).
        run_server_processes("bench.http_server:factory", args.workers, **options)


if __name__ == "__main__":
    main()
