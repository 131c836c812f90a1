"""A data export meets erasure: the withdrawal destroys its key and parts in the transaction
that records it (a saved part then opens nowhere), and after `Purged` the erasure proof finds
nothing of the export in any registered place."""

from __future__ import annotations

import json
import uuid

from lifecycle.application import Accounts
from lifecycle.audit.proof import Stores, erasure_proof, rows_naming, value_digest
from lifecycle.bootstrap import build_data_exports, erasure_status_query
from lifecycle.data_export_aggregate import ExportStatus
from lifecycle.migrations import EXPORT_CHUNKS, EXPORT_KEYS
from lifecycle.sealed_box import seal_part
from lifecycle.settings import Settings
from schemas.contract import TopicNames


def test_after_withdrawal_and_purge_nothing_of_the_export_is_left(
    settings: Settings, accounts: Accounts
) -> None:
    tag = uuid.uuid4().hex[:8]
    values = [f"export.{tag}@example.jp", f"Exportsworth {tag}", f"Chatted{tag} privately"]
    account_id = accounts.register(email=values[0], display_name=values[1], consent_version="v1")
    exports = build_data_exports(accounts, settings)
    export = exports.request(account_id).export
    chat = {
        "threads": [
            {
                "thread_id": "t",
                "company_id": "c",
                "opened_at": "2026-04-01T00:00:00Z",
                "messages": [
                    {
                        "message_id": "m",
                        "sender": "member",
                        "body": values[2],
                        "sent_at": "2026-04-01T00:00:00Z",
                    }
                ],
            }
        ]
    }
    saved = seal_part(
        export.public_key,
        json.dumps(chat).encode(),
        export_id=export.id,
        account_id=account_id,
        service="chat",
    )
    exports.take_parts(saved)
    assert exports.keys.private_key(export.id) is not None
    assert exports.parts.held_for(account_id) > 0

    accounts.request_withdrawal(account_id, reason="other")
    # The trigger ended it with the withdrawal's record, before anyone asked.
    assert exports.keys.private_key(export.id) is None
    assert exports.parts.held_for(account_id) == 0
    assert exports.get(account_id, export.id).status is ExportStatus.CANCELLED

    assert accounts.purge(account_id)
    report = erasure_proof(
        accounts,
        erasure_status_query(accounts, settings),
        account_id,
        {value_digest(v) for v in values} | {value_digest(values[2].split()[0])},
        Stores(databases={"lifecycle": accounts.database}, topics=TopicNames()),
    )
    assert report["values_found_anywhere"] == 0
    places = {p["place"]: p for p in report["places"] if p["owner"] == "lifecycle"}
    for table in (EXPORT_KEYS, EXPORT_CHUNKS, "data_exports"):
        assert places[f"lifecycle:{table}"]["checks_hold"], places[f"lifecycle:{table}"]
    for table in (EXPORT_KEYS, EXPORT_CHUNKS):
        assert rows_naming(accounts.database, table, account_id) == 0
