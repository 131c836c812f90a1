"""The data export's intake: part records from the consumer kit (group `lifecycle-export`)
become parts of their export, attributed to a service by their topic (each service's own,
writable only by its principal under Kafka ACLs), never by their payload.

A part on a topic that does not vouch for its `service` is refused: logged (ids and a reason)
and marked handled, never dead-lettered, as the erasure's refusals are (a forger must not be
able to fill ops' dead letters). A part for an export that ended or never existed is dropped:
its key is gone, nothing could open it. The work is idempotent (stored chunks ignore repeats,
the aggregate records a part once), so it runs in `prepare_many`, once per poll.
"""

from __future__ import annotations

from collections.abc import Sequence

from consumers.handler import Handler, HandlerResult
from lifecycle.data_export.service import DataExports
from lifecycle.logs import get_logger
from lifecycle.storage import Cursor
from schemas.contract import Envelope, TopicNames
from schemas.data_export import ExportPartV1

log = get_logger(__name__)


class PartIntake(Handler):
    def __init__(self, exports: DataExports, topics: TopicNames) -> None:
        self.exports = exports
        self.topics = topics
        self._refused: set[str] = set()

    def commits_before_prepare(self, envelope: Envelope) -> bool:
        return False

    def prepare(self, envelope: Envelope) -> None:
        self.prepare_many([envelope])

    def prepare_many(self, envelopes: Sequence[Envelope]) -> None:
        accepted: list[ExportPartV1] = []
        self._refused = set()
        for envelope in envelopes:
            part = envelope.data
            if not isinstance(part, ExportPartV1):
                continue
            service = self.topics.service_of_export_part_topic(envelope.topic or "")
            if service is None or service != part.service:
                log.warning(
                    "data_export.part_refused",
                    export_id=str(part.export_id),
                    service=part.service,
                    reason="unattributed" if service is None else "service_mismatch",
                )
                self._refused.add(envelope.id)
                continue
            accepted.append(part)
        if accepted:
            self.exports.take_parts(accepted)

    def handle(self, envelope: Envelope, cursor: Cursor) -> HandlerResult:
        if not isinstance(envelope.data, ExportPartV1):
            return HandlerResult(outcome="ignored")
        if envelope.id in self._refused:
            return HandlerResult(outcome="part_refused")
        return HandlerResult(outcome="part_taken")
