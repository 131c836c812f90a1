"""E-mail addresses are judged after NFKC folding and accepted only as exactly one mailbox."""

import string
from email.utils import getaddresses

import pytest
from hypothesis import given
from hypothesis import strategies as st
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


# ASCII addresses shaped like mailboxes (atoms of atext, host labels), half of them with one
# character of anything else put in somewhere: what `single_mailbox` accepts of them is judged
# without the standard library's parser, which must agree.
ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
LABEL = string.ascii_letters + string.digits + "-"
ANY_ASCII = "".join(chr(c) for c in range(128))
mailbox_shaped = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.lists(st.text(ATEXT, min_size=1, max_size=12), min_size=1, max_size=4).map(".".join),
    st.lists(st.text(LABEL, min_size=1, max_size=12), min_size=2, max_size=4).map(".".join),
)
ascii_address = st.one_of(
    mailbox_shaped,
    st.builds(
        lambda address, at, char: address[:at] + char + address[at:],
        mailbox_shaped,
        st.integers(0, 80),
        st.sampled_from(ANY_ASCII),
    ),
)


@given(ascii_address)
def test_an_accepted_ascii_address_reads_back_as_one_mailbox_from_the_standard_parser(
    address: str,
) -> None:
    try:
        folded = single_mailbox(address)
    except AddressError:
        return
    assert getaddresses([folded]) == [("", folded)]
