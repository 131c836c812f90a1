"""Reshred's evidence: a refused receipt is counted and logged by its id only when that id is
a UUID; whatever else an outside file holds there never reaches the log."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from structlog.testing import capture_logs

from lifecycle.application import Accounts
from lifecycle.audit.receipt import ReceiptSigner
from lifecycle.audit.reshred import evidence


def test_a_refused_receipt_is_logged_by_its_id_only_when_that_is_a_uuid(
    accounts: Accounts, tmp_path: Path
) -> None:
    good_id = str(uuid.uuid4())
    archive = tmp_path / "receipts.jsonl"
    archive.write_text(
        "\n".join(
            json.dumps({"receipt_id": rid, "account_id": str(uuid.uuid4())})
            for rid in (good_id, "hanako@example.jp")
        )
    )
    with capture_logs() as logs:
        found = evidence(accounts, [archive], ReceiptSigner.of(accounts))
    assert found.refused == 2
    refused = [e["receipt_id"] for e in logs if e["event"] == "reshred.receipt_refused"]
    assert refused == [good_id, None]
    assert "hanako" not in repr(logs)
