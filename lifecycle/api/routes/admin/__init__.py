"""Operations (role `ops`): one router over four surfaces, each in a module of its own.

`accounts` (directory and timelines), `erasures` (progress per service, retries), `stats`
(withdrawal reasons, gifts, scouts) and `operations` (projections, consumer lag, dead letters).

Everything here reads read models (`projections/`), never aggregates, except an account's
timeline and a retried withdrawal record, which read its stored events through `FactsMapper`
(no personal values). On the embedded default (SQLite) nothing else runs the projections, so
each read brings the read model it uses up to date first; on PostgreSQL `lifecycle project`
keeps them current and `GET /projections` shows how far behind they are.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from lifecycle.api.auth import require_role
from lifecycle.api.problems import problem_responses
from lifecycle.api.routes.admin import accounts, data_exports, erasures, operations, stats

# Each surface's router carries the `/admin/v1` prefix itself: FastAPI puts the route as its
# module declared it in the request scope, and metrics and access logs label requests with
# that route's path, which must be the whole template.
router = APIRouter(
    tags=["admin"],
    dependencies=[Depends(require_role("ops"))],
    responses=problem_responses(401, 403),
)
for surface in (accounts, erasures, data_exports, stats, operations):
    router.include_router(surface.router)
