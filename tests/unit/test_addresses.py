"""E-mail addresses are judged after NFKC folding and accepted only as exactly one mailbox."""

import pytest
from support import HOSTILE_ADDRESSES as HOSTILE

from lifecycle.addresses import AddressError, single_mailbox
from lifecycle.domain import Account
from lifecycle.errors import InvalidCommandError


@pytest.mark.parametrize("address", HOSTILE)
def test_an_address_that_is_not_one_mailbox_is_refused(address: str) -> None:
    with pytest.raises(AddressError) as refused:
        single_mailbox(address)
    assert address not in str(refused.value) or not address


@pytest.mark.parametrize("address", HOSTILE)
def test_registration_refuses_it_as_email_invalid(address: str) -> None:
    with pytest.raises(InvalidCommandError) as refused:
        Account.register(email=address, display_name="x", consent_version="v")
    assert refused.value.code == "email_invalid"


@pytest.mark.parametrize(
    ("given", "folded"),
    [
        ("hanako@example.jp", "hanako@example.jp"),
        ("Hanako.Yamada+jobs@Example.JP", "hanako.yamada+jobs@example.jp"),
        ("ＨＡＮＡＫＯ＠ＥＸＡＭＰＬＥ．ＪＰ", "hanako@example.jp"),  # noqa: RUF001
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("花子@例え.jp", "花子@例え.jp"),
        ("user@mail.sub-domain.example", "user@mail.sub-domain.example"),
    ],
)
def test_one_mailbox_is_accepted_folded(given: str, folded: str) -> None:
    assert single_mailbox(given) == folded
