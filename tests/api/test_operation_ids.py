"""Every operation's id is the name a generated client gives its function (`registerAccount`, not
FastAPI's `register_v1_accounts_post`), and the whole list is pinned here: renaming one breaks
every client generated from the document, so it must be a conscious change of this list."""

from __future__ import annotations

import re

from lifecycle.api import create_app
from lifecycle.settings import Settings

OPERATION_IDS = {
    ("GET", "/healthz"): "checkLiveness",
    ("GET", "/readyz"): "checkReadiness",
    ("GET", "/metrics"): "getMetrics",
    ("POST", "/v1/accounts"): "registerAccount",
    ("GET", "/v1/accounts/{account_id}"): "getAccount",
    ("PATCH", "/v1/accounts/{account_id}/preferences"): "editPreferences",
    ("POST", "/v1/accounts/{account_id}/scouts"): "receiveScout",
    ("POST", "/v1/accounts/{account_id}/gift-claim"): "claimGift",
    ("GET", "/v1/accounts/{account_id}/withdrawal-preview"): "previewWithdrawal",
    ("POST", "/v1/accounts/{account_id}/withdrawal"): "requestWithdrawal",
    ("GET", "/v1/accounts/{account_id}/erasure"): "getErasureStatus",
    ("POST", "/v1/accounts/{account_id}/data-exports"): "requestDataExport",
    ("GET", "/v1/accounts/{account_id}/data-exports/{export_id}"): "getDataExport",
    ("GET", "/v1/accounts/{account_id}/data-exports/{export_id}/download"): "downloadDataExport",
    ("POST", "/v1/scouts"): "receiveScouts",
    ("GET", "/admin/v1/accounts"): "listAccounts",
    ("GET", "/admin/v1/accounts/{account_id}/timeline"): "getAccountTimeline",
    ("GET", "/admin/v1/erasures"): "listErasures",
    ("GET", "/admin/v1/erasures/{account_id}"): "getErasure",
    ("POST", "/admin/v1/erasures/{account_id}/services/{service}/retry"): "retryErasure",
    ("GET", "/admin/v1/erasures/{account_id}/receipt"): "getAccountErasureReceipt",
    ("GET", "/admin/v1/data-exports"): "listDataExports",
    ("POST", "/admin/v1/data-exports/{export_id}/services/{service}/retry"): "retryDataExport",
    ("GET", "/admin/v1/stats/withdrawal-reasons"): "getWithdrawalReasonStats",
    ("GET", "/admin/v1/stats/gifts"): "getGiftStats",
    ("GET", "/admin/v1/stats/scouts"): "getScoutStats",
    ("GET", "/admin/v1/projections"): "listProjections",
    ("GET", "/admin/v1/consumers"): "listConsumerLag",
    ("GET", "/admin/v1/dead-letters/{group}"): "listDeadLetters",
    ("POST", "/admin/v1/dead-letters/{group}/{partition}/{offset}/redrive"): "redriveDeadLetter",
    ("POST", "/admin/v1/dead-letters/{group}/{partition}/{offset}/discard"): "discardDeadLetter",
    ("GET", "/audit/v1/accounts/{account_id}/events"): "listAccountEvents",
    ("GET", "/audit/v1/hash-chain"): "getHashChainHead",
    ("GET", "/audit/v1/receipts/{receipt_id}"): "getErasureReceipt",
    ("GET", "/.well-known/erasure-receipt-key"): "getErasureReceiptKey",
}


def operation_ids() -> dict[tuple[str, str], str]:
    document = create_app(Settings(api_tokens={"0" * 64: "service"})).openapi()
    return {
        (method.upper(), path): operation["operationId"]
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def test_every_operation_has_its_pinned_id() -> None:
    assert operation_ids() == OPERATION_IDS


def test_ids_are_unique_lower_camel_case_verbs_a_client_can_use_as_function_names() -> None:
    ids = list(operation_ids().values())
    assert len(set(ids)) == len(ids)
    for found in ids:
        assert re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)+", found), found
