"""The kit's request side: a member's data, sealed to the export's key, as the service's part.

On `account.export-requested.v1` addressed to the service, inside the kit's transaction (so the
part rides the outbox with the request's `processed_events` mark: at least once, de-duplicated):

1. an expired request is dropped (its private key is gone: nothing sent could be opened);
2. a withdrawn account answers `failed` with `account_withdrawn` (its data is erased or going);
3. else the service's `export(cursor, account_id)` gives its section (a model of
   `schemas.data_export.SECTION_MODELS`), read under the account's lock, so it is consistent;
4. the section's JSON is sealed to the request's public key (`lifecycle.sealed_box.seal_part`:
   X25519, HKDF, AES-GCM, chunked) and each chunk goes to the service's own topic
   `account.export-part.<service>.v1`; no readable value leaves the service.

Whose fault: a dependency that is down (the database) is the kit's to wait out, like any step;
a request the kit cannot seal to (a public key no X25519 key agrees with) is the record's own
fault and is dead-lettered. A service that cannot produce its part, by `ExportFailedError` or
any other failure of its `export`, answers `failed` with a code (`internal_error` for the
unexpected), which ops can retry; the failed read is rolled back to a savepoint first.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from consumers.faults import infrastructure_fault
from consumers.handler import ExportFailedError, HandlerResult, PoisonRecord, TransientError
from consumers.store import Outgoing
from lifecycle.logs import get_logger
from lifecycle.sealed_box import failed_part, seal_part
from lifecycle.storage import Cursor
from schemas.contract import Envelope
from schemas.data_export import (
    ExportFailureCode,
    ExportPartV1,
    ExportRequestedV1,
    encode_export_part,
)

if TYPE_CHECKING:
    from consumers.member_data import MemberDataHandler

EXPORT = "export"
SAVEPOINT = "export_section"

log = get_logger(__name__)


def answer_requests(
    handler: MemberDataHandler, cursor: Cursor, envelopes: Sequence[Envelope]
) -> list[HandlerResult]:
    """Each request's result: the part's records to publish (or none), and the outcome."""
    requests = [e.data for e in envelopes if isinstance(e.data, ExportRequestedV1)]
    withdrawn = handler.withdrawn_among(cursor, [r.account_id for r in requests])
    now = datetime.now(UTC)
    results: list[HandlerResult] = []
    for request in requests:
        if not request.addresses(handler.service):
            results.append(HandlerResult(outcome="ignored"))
            continue
        if request.expires_at <= now:
            _log("export.expired", handler, request)
            results.append(HandlerResult(outcome="export_expired"))
            continue
        if request.account_id in withdrawn:
            parts = [_failure(handler, request, "account_withdrawn")]
        else:
            parts = _produce(handler, cursor, request)
        failed = parts[0].outcome == "failed"
        topic = handler.topics.export_part(handler.service)
        outgoing = tuple(Outgoing(topic, encode_export_part(part)) for part in parts)
        _log(
            "export.part_failed" if failed else "export.part_sealed",
            handler,
            request,
            chunks=len(parts),
            code=parts[0].failure_code,
        )
        outcome = "export_failed" if failed else "exported"
        results.append(HandlerResult(outgoing, outcome=outcome))
    return results


def _produce(
    handler: MemberDataHandler, cursor: Cursor, request: ExportRequestedV1
) -> list[ExportPartV1]:
    cursor.execute(f"SAVEPOINT {SAVEPOINT}")
    try:
        section = handler.export(cursor, request.account_id)
        plain = section.model_dump_json().encode()
    except Exception as error:
        if isinstance(error, TransientError | PoisonRecord) or infrastructure_fault(error):
            raise  # the kit's: waited out, retried or dead-lettered
        cursor.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
        code: ExportFailureCode = (
            error.code if isinstance(error, ExportFailedError) else "internal_error"
        )
        _log("export.section_failed", handler, request, error=type(error).__name__, code=code)
        return [_failure(handler, request, code)]
    cursor.execute(f"RELEASE SAVEPOINT {SAVEPOINT}")
    try:
        return seal_part(
            request.public_key,
            plain,
            export_id=request.export_id,
            account_id=request.account_id,
            service=handler.service,
            part_version=handler.section_version,
        )
    except ValueError:
        # No key agreement with this public key (a low-order point): the request's fault.
        raise PoisonRecord("export_key_invalid") from None


def _failure(
    handler: MemberDataHandler, request: ExportRequestedV1, code: ExportFailureCode
) -> ExportPartV1:
    return failed_part(
        export_id=request.export_id,
        account_id=request.account_id,
        service=handler.service,
        failure_code=code,
    )


def _log(
    event: str, handler: MemberDataHandler, request: ExportRequestedV1, **fields: object
) -> None:
    """Ids and codes only: the section itself is never logged."""
    log.info(
        event,
        service=handler.service,
        account_id=str(request.account_id),
        export_id=str(request.export_id),
        **fields,
    )
