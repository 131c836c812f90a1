"""What the routes share, in one place: settings, the application, the state built at start-up
(erasure process, live read models) and the Kafka inspector, each as a FastAPI dependency.

A dependency that only looks something up is `async def`: FastAPI calls it on the event loop.
A plain `def` one would cost every request a hop to the thread pool and back (tens of µs of
CPU each, more on a busy machine: `python -m bench.route_costs`); those that may do I/O (a
read model brought up to date, a Kafka client) stay plain functions."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, TypeVar
from uuid import UUID

from fastapi import Depends, FastAPI, Path, Query, Request

from lifecycle.api.auth import AuditorCaller, OpsCaller
from lifecycle.api.problems import request_id_of
from lifecycle.application import Accounts
from lifecycle.bootstrap import (
    build_data_exports,
    build_erasure,
    erasure_evidence,
    erasure_status_query,
)
from lifecycle.data_export.service import DataExports
from lifecycle.erasure.process import ErasureProcess
from lifecycle.erasure.queries import ErasureStatusQuery
from lifecycle.errors import AccountNotFoundError, NotReadyError
from lifecycle.kafka.inspector import KafkaInspector, KafkaInspectorClient, NoKafka
from lifecycle.services.actions import Actor
from lifecycle.services.audit import AuditReads
from lifecycle.services.dead_letters import DeadLetters
from lifecycle.services.erasure_evidence import ErasureEvidence
from lifecycle.services.erasures import Erasures
from lifecycle.services.exports import ExportOps
from lifecycle.services.read_models import ReadModels
from lifecycle.services.withdrawals import Withdrawals
from lifecycle.settings import Settings
from projections.base import ReadModel
from projections.erasure import ErasureStatusView
from projections.runner import Projector

M = TypeVar("M", bound=ReadModel)

# How many items one page of a listing holds.
Limit = Annotated[int, Query(ge=1, le=1000)]


async def account_id_param(
    account_id: Annotated[
        str,
        Path(
            description="The account's id (a UUID).",
            json_schema_extra={"format": "uuid"},
        ),
    ],
) -> UUID:
    """An id that is no UUID names no account: 404, like any other unknown id."""
    try:
        return UUID(account_id)
    except ValueError:
        raise AccountNotFoundError() from None


AccountId = Annotated[UUID, Depends(account_id_param)]


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_accounts(request: Request) -> Accounts:
    """The application the app was created with (or built in its lifespan)."""
    accounts: Accounts | None = getattr(request.app.state, "accounts", None)
    if accounts is None:
        raise NotReadyError(detail="the service is starting or stopping")
    return accounts


AccountsDep = Annotated[Accounts, Depends(get_accounts)]


@dataclass
class ApiState:
    """What the routes use beyond the application, built once at start-up (`start`)."""

    accounts: Accounts
    settings: Settings
    erasure: ErasureProcess
    exports: DataExports
    models: dict[str, ReadModel] = field(default_factory=dict)
    locks: dict[str, threading.Lock] = field(default_factory=dict)

    @classmethod
    def start(
        cls, accounts: Accounts, settings: Settings, erasure: ErasureProcess | None = None
    ) -> ApiState:
        """The erasure process (the one the workers use, when given) and the live read
        models; their tables come from migrations, checked when `accounts` was built."""
        models = ReadModels(accounts).live()
        return cls(
            accounts,
            settings,
            erasure=erasure or build_erasure(accounts, settings),
            exports=build_data_exports(accounts, settings),
            models=models,
            locks={name: threading.Lock() for name in models},
        )

    def model(self, model_class: type[M]) -> M:
        """The live read model; on the embedded default, first brought up to date."""
        model = self.models[model_class.name]
        assert isinstance(model, model_class)
        if self.settings.is_embedded:
            # Nothing else projects on the embedded default: bring it up to date first.
            with self.locks[model_class.name]:
                Projector(self.accounts, model).catch_up()
        return model


async def get_state(request: Request) -> ApiState:
    state: ApiState | None = getattr(request.app.state, "api", None)
    if state is None:
        raise NotReadyError(detail="the service is starting or stopping")
    return state


StateDep = Annotated[ApiState, Depends(get_state)]


async def get_erasure_process(state: StateDep) -> ErasureProcess:
    return state.erasure


ErasureDep = Annotated[ErasureProcess, Depends(get_erasure_process)]


async def get_erasure_evidence(state: StateDep) -> ErasureEvidence:
    return erasure_evidence(state.accounts, state.settings, state.erasure)


ErasureEvidenceDep = Annotated[ErasureEvidence, Depends(get_erasure_evidence)]


async def get_data_exports(state: StateDep) -> DataExports:
    return state.exports


DataExportsDep = Annotated[DataExports, Depends(get_data_exports)]


def get_erasure_status(state: StateDep) -> ErasureStatusQuery:
    return erasure_status_query(state.accounts, state.settings)


ErasureStatusDep = Annotated[ErasureStatusQuery, Depends(get_erasure_status)]


def kafka_inspector(request: Request) -> KafkaInspector:
    """The app's Kafka inspector (tests may set `app.state.kafka`), or NoKafka; topic and
    group names come from the settings, so they carry the configured prefix."""
    return inspector_of(request.app)


def inspector_of(app: FastAPI) -> KafkaInspector:
    """`kafka_inspector` for an app (the readiness checker has no request)."""
    found: KafkaInspector | None = getattr(app.state, "kafka", None)
    if found is not None:
        return found
    settings: Settings = app.state.settings
    if not settings.kafka_bootstrap:
        return NoKafka(settings.topics)
    return KafkaInspectorClient(
        settings.kafka_bootstrap, settings.topics, security=settings.kafka_security
    )


KafkaDep = Annotated[KafkaInspector, Depends(kafka_inspector)]


def get_dead_letters(accounts: AccountsDep, kafka: KafkaDep) -> DeadLetters:
    return DeadLetters(accounts, kafka)


def get_erasures(state: StateDep, kafka: KafkaDep) -> Erasures:
    deadline = timedelta(hours=state.settings.erasure_deadline_hours)
    return Erasures(state.accounts, state.model(ErasureStatusView), deadline, kafka)


def get_audit_reads(state: StateDep) -> AuditReads:
    return AuditReads(state.accounts, state.settings.audit_decrypt_roles)


def get_read_models(accounts: AccountsDep) -> ReadModels:
    return ReadModels(accounts)


DeadLettersDep = Annotated[DeadLetters, Depends(get_dead_letters)]
ErasuresDep = Annotated[Erasures, Depends(get_erasures)]


def get_export_ops(state: StateDep) -> ExportOps:
    return ExportOps(state.exports)


ExportOpsDep = Annotated[ExportOps, Depends(get_export_ops)]


async def get_withdrawals(state: StateDep) -> Withdrawals:
    """Built per request: two attribute stores, no I/O, so on the event loop."""
    return Withdrawals(state.accounts, state.exports)


WithdrawalsDep = Annotated[Withdrawals, Depends(get_withdrawals)]
AuditReadsDep = Annotated[AuditReads, Depends(get_audit_reads)]
ReadModelsDep = Annotated[ReadModels, Depends(get_read_models)]


def ops_actor(caller: OpsCaller, request: Request) -> Actor:
    """Who is asking, for the services' records: the role and the request's id."""
    return Actor(role=caller.role, request_id=request_id_of(request))


def auditor_actor(caller: AuditorCaller, request: Request) -> Actor:
    return Actor(role=caller.role, request_id=request_id_of(request))


OpsActor = Annotated[Actor, Depends(ops_actor)]
AuditorActor = Annotated[Actor, Depends(auditor_actor)]
