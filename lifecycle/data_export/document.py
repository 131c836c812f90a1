"""The export's document: the account's own section, and the whole document streamed.

The document is never assembled or stored: the download opens each part's chunks one at a
time, in order, and writes their bytes between the document's own fields (each part is a
section's JSON, split in byte ranges), so a member with 10,000 scouts and 2,000 chat messages
costs one chunk of memory, not the document.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from lifecycle.account_terms import default_notifications
from lifecycle.data_export_aggregate import OWN_PART, DataExport
from lifecycle.domain import Account
from schemas.data_export import AccountSectionV1


def account_section(account: Account) -> AccountSectionV1:
    """The account as the member sees it: every value they entered, every scout received,
    the gift."""
    gift = account.gift
    desired = account.desired
    return AccountSectionV1.model_validate(
        {
            "account_id": account.id,
            "email": account.email,
            "display_name": account.display_name,
            "phone": account.phone,
            "profile": {
                "birth_year": account.profile.get("birth_year"),
                "prefecture": account.profile.get("prefecture"),
                "job_title": account.job_title,
            },
            "work_history": list(account.work_history),
            "desired": {
                "locations": list(desired.get("locations", [])),
                "industries": list(desired.get("industries", [])),
                "job_types": list(desired.get("job_types", [])),
                "min_salary": desired.get("min_salary"),
            },
            "notifications": {**default_notifications(), **account.notifications},
            "consent_version": account.consent_version,
            "channel": account.channel,
            "registered_at": account.registered_at,
            "scouts": sorted(
                (
                    {
                        "scout_id": scout_id,
                        "company_id": scout["company_id"],
                        "job_id": scout["job_id"],
                        "received_at": scout["received_at"],
                    }
                    for scout_id, scout in account.scouts.items()
                ),
                key=lambda scout: (scout["received_at"], scout["scout_id"]),
            ),
            "gift": None
            if gift is None
            else {
                "kind": gift["gift_kind"],
                "amount_jpy": gift["amount_jpy"],
                "company_id": gift["company_id"],
                "start_date": gift["start_date"],
                "claimed_at": gift["claimed_at"],
            },
        }
    )


def _time(moment: datetime | None) -> str:
    return json.dumps(None if moment is None else moment.isoformat().replace("+00:00", "Z"))


def stream_document(
    export: DataExport, section: Callable[[str], Iterable[bytes]]
) -> Iterator[bytes]:
    """`account.data-export.v1`'s bytes; `section(name)` yields one part's opened chunks."""
    head: dict[str, Any] = {"export_id": str(export.id), "account_id": str(export.account_id)}
    yield (
        json.dumps(head)[:-1].encode()
        + f', "requested_at": {_time(export.requested_at)}'.encode()
        + f', "ready_at": {_time(export.ready_at)}, "account": '.encode()
    )
    yield from section(OWN_PART)
    yield b', "services": {'
    for index, service in enumerate(export.services):
        yield (b", " if index else b"") + json.dumps(service).encode() + b": "
        yield from section(service)
    yield b"}}"
