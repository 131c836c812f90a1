"""E-mail addresses: folded as people mean them, then accepted only as exactly one mailbox.

One home for the rule, used by the domain (registration) and by the mail service's messages
(the last check before an address becomes a recipient). Standard library only: the domain and
the consumer kit both import it.

The address is judged *after* folding: NFKC turns a full-width comma or at sign (U+FF0C,
U+FF20) into `,` and `@`, so `attacker<U+FF20>evil.example<U+FF0C>victim@example.jp` would pass
a check made before folding and become two recipients after it. The accepted shape is a
dot-atom local part and a dot-separated host name: no quoting, no comments, no display name,
no route, no list. Non-ASCII letters are allowed (internationalised addresses), invisible and
bidirectional characters are not.
"""

from __future__ import annotations

import re
import unicodedata
from email.utils import getaddresses

MAX_LENGTH = 254
MAX_LOCAL = 64
# Characters that make an address more (or other) than one mailbox in a header or an SMTP
# command: lists, routes, quoting, comments, display names, literals.
STRUCTURAL = frozenset(',;<>"()[]\\:')
# Unicode categories that render as nothing: format (ZWSP, ZWJ, RLM, BOM, soft hyphen),
# control, surrogate, private use, unassigned.
INVISIBLE = frozenset({"Cf", "Cc", "Cs", "Co", "Cn"})
# The same two rules for ASCII text, in one match: no space, no control character.
PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
# RFC 5322 atext plus non-ASCII (RFC 6532); dots only between atoms.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
LOCAL_PART = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
# Host labels: letters (any script), digits and inner hyphens; a dot-separated name of two or more.
_LABEL = r"[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?"
DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")


class AddressError(ValueError):
    """Not exactly one plausible mailbox; the message never repeats the address."""


def normalised(address: str) -> str:
    """Compare addresses as people mean them: NFKC, trimmed, case-folded."""
    return unicodedata.normalize("NFKC", address).strip().casefold()


def single_mailbox(address: str) -> str:
    """The folded address, when it is exactly one mailbox; AddressError otherwise."""
    folded = normalised(address)
    if not folded or len(folded) > MAX_LENGTH:
        raise AddressError("address is empty or too long")
    if not (
        PRINTABLE_ASCII.fullmatch(folded)
        if folded.isascii()
        else not any(c.isspace() or unicodedata.category(c) in INVISIBLE for c in folded)
    ):
        raise AddressError("address holds white space or an invisible character")
    if STRUCTURAL.intersection(folded):
        raise AddressError("address holds a list, quoting, route or display-name character")
    local, at, domain = folded.partition("@")
    if not at or "@" in domain:
        raise AddressError("address needs exactly one @")
    if len(local) > MAX_LOCAL or not LOCAL_PART.fullmatch(local):
        raise AddressError("local part is not a dot-atom")
    if not DOMAIN.fullmatch(domain):
        raise AddressError("domain is not a host name")
    # The standard library's header parser must read the same single mailbox back. An ASCII
    # dot-atom at a host name always reads back (tests/unit/test_addresses.py proves it over
    # generated addresses), so only the others are parsed: the parser walks the text a
    # character at a time in Python, and was most of a registration's validation.
    if not folded.isascii() and getaddresses([folded]) != [("", folded)]:
        raise AddressError("address does not parse as one mailbox")
    return folded
