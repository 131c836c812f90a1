"""The two HTTP targets of case 2, each run as its own uvicorn process.

    python -m bench.http_server app  --port P --schema S --master-key K
    python -m bench.http_server bare --port P --schema S --row-size N

`app` is the service exactly as `lifecycle serve` runs it (create_app, logging at INFO to
stderr, uvicorn without access log). `bare` is the rawest FastAPI route that does the same
durable work: parse the JSON body, INSERT one row of the registration's stored size into a
table shaped like the event store, with psycopg from a pool, in a plain (threadpool) route.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any
from uuid import uuid4

import uvicorn

ROW_TOPIC = "lifecycle.domain:Account.Registered"


def bare_app(database_url: str, schema: str, row_size: int, pool_size: int) -> Any:
    from fastapi import FastAPI, status
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(
        database_url,
        min_size=min(10, pool_size),
        max_size=pool_size,
        kwargs={"autocommit": True},
        open=True,
    )
    statement = (
        f"INSERT INTO {schema}.raw_events (originator_id, originator_version, topic, state) "
        "VALUES (%s, 1, %s, %s)"
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

    return app


def service_app(database_url: str, schema: str, master_key: str) -> Any:
    from bench.workload import SERVICE_TOKEN, bench_settings, open_accounts
    from lifecycle.api.app import create_app
    from lifecycle.logs import configure_logging
    from lifecycle.settings import token_digest

    settings = bench_settings(database_url, schema, master_key).model_copy(
        update={
            "log_level": "INFO",
            "api_tokens": {token_digest(SERVICE_TOKEN): "service"},
        }
    )
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings, open_accounts(settings))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_server")
    parser.add_argument("target", choices=("app", "bare"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--master-key", default="")
    parser.add_argument("--row-size", type=int, default=964)
    # The service's own pool: POSTGRES_POOL_SIZE 10 + POSTGRES_MAX_OVERFLOW 20.
    parser.add_argument("--pool-size", type=int, default=30)
    args = parser.parse_args()
    database_url = os.environ["LIFECYCLE_DATABASE_URL"]
    if args.target == "app":
        app = service_app(database_url, args.schema, args.master_key)
    else:
        app = bare_app(database_url, args.schema, args.row_size, args.pool_size)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
