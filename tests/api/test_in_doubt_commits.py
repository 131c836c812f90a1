"""A write whose COMMIT was applied but whose answer was lost is found out, never guessed.

The application's PostgreSQL connections go through a proxy (`tests/pg_proxy.py`) that lets
one COMMIT reach the server, waits for the server's answer (the write is durable) and cuts the
connection instead of passing it on. The route must answer as a success, once, with what is
stored: no 409 for a conflict with the write's own events, no second copy. The proxy can also
cut before the COMMIT is delivered: the write was rolled back, and is stored by the retry.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import pytest
from fastapi.testclient import TestClient
from pg_proxy import CommitCuttingProxy
from support import TOKENS, auth, race

from lifecycle.api import create_app
from lifecycle.application import Accounts
from lifecycle.crypto import new_master_key
from lifecycle.settings import Settings, token_digest

SERVICE = auth("service")


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[CommitCuttingProxy]:
    with CommitCuttingProxy(urlsplit(postgres_url).port or 5432) as found:
        yield found


@pytest.fixture
def cut_client(
    postgres_url: str, lifecycle_schema: str, proxy: CommitCuttingProxy
) -> Iterator[tuple[TestClient, Accounts]]:
    settings = Settings(
        database_url=proxy.url(postgres_url),
        database_schema=lifecycle_schema,
        kafka_bootstrap=None,
        master_key=new_master_key(),
        api_tokens={token_digest(token): role for role, token in TOKENS.items()},
        log_format="json",
    )
    accounts = Accounts(env=settings.application_env())
    try:
        with TestClient(create_app(settings, accounts)) as client:
            yield client, accounts
    finally:
        accounts.close()


def events_of(accounts: Accounts, account_id: UUID) -> list[str]:
    db = accounts.database
    with db.transaction(commit=False) as cursor:
        rows = cursor.execute(
            f"SELECT topic FROM {db.events_table} WHERE originator_id = %s "
            "ORDER BY originator_version",
            (account_id,),
        ).fetchall()
    return [str(row[0]).rpartition(".")[2] for row in rows]


def accounts_with_email(accounts: Accounts) -> int:
    db = accounts.database
    with db.transaction(commit=False) as cursor:
        row = cursor.execute(
            f"SELECT count(*) FROM {db.events_table} WHERE topic LIKE %s", ("%Account.Registered",)
        ).fetchone()
    assert row is not None
    return int(row[0])


def registration(email: str) -> dict[str, str]:
    return {"email": email, "display_name": "Sato Hanako", "consent_version": "2024-04"}


@pytest.mark.parametrize("cut", ["after_commit", "before_commit"])
def test_a_registration_answers_201_once_with_the_stored_id(
    cut_client: tuple[TestClient, Accounts], proxy: CommitCuttingProxy, cut: str
) -> None:
    client, accounts = cut_client
    email = f"member-{uuid4().hex[:10]}@example.com"
    getattr(proxy, f"cut_{cut}")()
    response = client.post("/v1/accounts", json=registration(email), headers=SERVICE)
    assert proxy.cuts == 1, "the proxy cut no connection"
    assert response.status_code == 201, response.text
    account_id = UUID(response.json()["account_id"])
    assert events_of(accounts, account_id) == ["Registered"]
    assert accounts_with_email(accounts) == 1
    # The e-mail is held by that account alone: a second registration is refused.
    again = client.post("/v1/accounts", json=registration(email), headers=SERVICE)
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "email_in_use"


@pytest.mark.parametrize("cut", ["after_commit", "before_commit"])
def test_an_edit_and_a_withdrawal_answer_success_once(
    cut_client: tuple[TestClient, Accounts], proxy: CommitCuttingProxy, cut: str
) -> None:
    client, accounts = cut_client
    email = f"member-{uuid4().hex[:10]}@example.com"
    created = client.post("/v1/accounts", json=registration(email), headers=SERVICE)
    account_id = UUID(created.json()["account_id"])
    base = f"/v1/accounts/{account_id}"

    getattr(proxy, f"cut_{cut}")()
    edited = client.patch(
        f"{base}/preferences", json={"notifications": {"scouts": False}}, headers=SERVICE
    )
    assert proxy.cuts == 1
    assert edited.status_code == 200, edited.text
    assert edited.json()["changed"] == ["notifications"]

    getattr(proxy, f"cut_{cut}")()
    withdrawn = client.post(
        f"{base}/withdrawal", json={"reason": "hired_elsewhere"}, headers=SERVICE
    )
    assert proxy.cuts == 2
    assert withdrawn.status_code == 202, withdrawn.text
    assert events_of(accounts, account_id) == [
        "Registered",
        "PreferencesEdited",
        "WithdrawalRequested",
    ]


def test_concurrent_registrations_sharing_one_commit_each_answer_once(
    cut_client: tuple[TestClient, Accounts], proxy: CommitCuttingProxy
) -> None:
    """Group commit stores several callers' events in one transaction: when its answer is
    lost, every caller of the batch gets its own account, none a conflict."""
    _, accounts = cut_client
    emails = [f"member-{uuid4().hex[:10]}@example.com" for _ in range(8)]
    proxy.cut_after_commit()
    results = race(
        lambda i: accounts.register(
            email=emails[i], display_name="Sato Hanako", consent_version="2024-04"
        ),
        n=len(emails),
    )
    assert proxy.cuts == 1
    assert [r for r in results if not isinstance(r, UUID)] == []
    assert len(set(results)) == len(emails)
    for account_id in results:
        assert isinstance(account_id, UUID)
        assert events_of(accounts, account_id) == ["Registered"]
    assert accounts_with_email(accounts) == len(emails)
