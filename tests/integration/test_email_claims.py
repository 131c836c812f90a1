"""E-mail claims that do not re-link: after `Purged`, whoever holds every remaining key (the
claim key included) can find the claim of a suspected address, but nothing in it names the
account, while uniqueness and release go on working."""

from __future__ import annotations

from uuid import uuid4

import pytest
from eventsourcing.utils import get_topic

from lifecycle.application import Accounts
from lifecycle.crypto import holder_token, keyed_id
from lifecycle.email_claim import EmailClaim
from lifecycle.errors import EmailAlreadyClaimedError

EMAIL = "relink.probe.5521@example.jp"


def test_after_purge_the_claim_events_name_no_account(accounts: Accounts) -> None:
    gone = accounts.register(email=EMAIL, display_name="Relinko", consent_version="v1")
    with pytest.raises(EmailAlreadyClaimedError):
        accounts.register(email=EMAIL.upper(), display_name="Other", consent_version="v1")
    accounts.request_withdrawal(gone, reason="other")
    accounts.purge(gone)

    # The attacker's path: the claim key and a suspected address give the claim's stream ...
    claim_id = keyed_id(accounts._claim_key, EMAIL)
    stored = accounts.recorder.select_events(claim_id)
    assert [s.topic for s in stored] == [
        get_topic(EmailClaim.Created),
        get_topic(EmailClaim.Claimed),
        get_topic(EmailClaim.Released),
    ]
    # ... and nothing in it names the account, in any form.
    for state in (s.state for s in stored):
        for form in (str(gone), gone.hex, gone.bytes, str(gone).upper()):
            assert (form.encode() if isinstance(form, str) else form) not in state
    claim = accounts.repository.get(claim_id)
    assert isinstance(claim, EmailClaim) and claim.holder is None

    # Release worked: the address is free; a new account holds it, and it is taken again.
    again = accounts.register(email=EMAIL, display_name="Relinko II", consent_version="v1")
    with pytest.raises(EmailAlreadyClaimedError):
        accounts.register(email=EMAIL, display_name="Third", consent_version="v1")
    claim = accounts.repository.get(claim_id)
    assert isinstance(claim, EmailClaim)
    assert claim.holder == accounts.vault.holder_token(again, claim_id)


def test_a_registration_mapped_again_keeps_the_key_its_holder_was_made_with(
    accounts: Accounts,
) -> None:
    # Group commit saves a failed batch again request by request: `Registered` is mapped twice.
    account_id, claim_id = uuid4(), uuid4()
    holder = accounts.vault.holder_token(account_id, claim_id, new=True)
    first, _ = accounts.vault.new_key(account_id)
    again, _ = accounts.vault.new_key(account_id)

    assert first == again
    assert holder_token(first, claim_id) == holder
    accounts.vault.drop_fresh(account_id)
    assert accounts.vault.new_key(account_id)[0] != first
