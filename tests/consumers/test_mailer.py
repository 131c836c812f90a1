"""The mailer sends to exactly the one recipient it is given, never to what a header parses to."""

from uuid import uuid4

import pytest
from support import HOSTILE_ADDRESSES as HOSTILE
from support import smtp_sink

from consumers.mailer import (
    DiscardingMailer,
    InvalidRecipientError,
    SmtpMailer,
    confirmation_message,
    notice_message,
)


def test_hostile_addresses_never_reach_the_smtp_server() -> None:
    with smtp_sink() as smtp:
        mailer = SmtpMailer(smtp.host, smtp.port)
        for address in HOSTILE:
            with pytest.raises(InvalidRecipientError):
                confirmation_message("ce-1", address, "Hanako", uuid4())
            with pytest.raises(InvalidRecipientError):
                notice_message(
                    "n-1", email=address, display_name="H", kind="notices", subject="s", body="b"
                )
            good = notice_message(
                "n-2", email="hanako@example.jp", display_name="H", kind="k", subject="s", body="b"
            )
            # A well-formed message is not a licence: the envelope recipient is checked too.
            with pytest.raises(InvalidRecipientError):
                mailer.send(good, address)
            with pytest.raises(InvalidRecipientError):
                DiscardingMailer().send(good, address)
        assert smtp.messages() == []


def test_the_envelope_holds_exactly_the_one_recipient() -> None:
    # A display name that looks like an address list stays a display name: one RCPT TO.
    hostile_name = 'Evil, attacker@evil.example <attacker@evil.example>; "x"'
    full_width = "ＨＡＮＡＫＯ＠ＥＸＡＭＰＬＥ．ＪＰ"  # noqa: RUF001 - full-width on purpose
    message = confirmation_message("ce-2", full_width, hostile_name, uuid4())
    with smtp_sink() as smtp:
        SmtpMailer(smtp.host, smtp.port).send(message, full_width)
        (received,) = smtp.messages()
    assert received.recipients == ["hanako@example.jp"]
    assert [a.addr_spec for a in received.message["To"].addresses] == ["hanako@example.jp"]


def test_a_display_name_with_line_breaks_stays_in_its_header() -> None:
    # A name with a line break in it never starts a header of its own (here: a Bcc).
    hostile_name = "Hanako\r\nBcc: attacker@evil.example"
    message = confirmation_message("ce-3", "hanako@example.jp", hostile_name, uuid4())
    with smtp_sink() as smtp:
        SmtpMailer(smtp.host, smtp.port).send(message, "hanako@example.jp")
        (received,) = smtp.messages()
    assert received.recipients == ["hanako@example.jp"]
    assert received.message["Bcc"] is None
    assert [a.addr_spec for a in received.message["To"].addresses] == ["hanako@example.jp"]
    assert received.message["Subject"] == "退会手続きが完了しました / Your withdrawal is complete"
    assert "Hanako" in received.message.get_content()


def test_an_internationalised_address_is_mailed_over_smtputf8() -> None:
    # Registration accepts RFC 6532 addresses; the relay offers SMTPUTF8.
    message = confirmation_message("ce-4", "花子@例え.jp", "山田 花子", uuid4())
    with smtp_sink() as smtp:
        SmtpMailer(smtp.host, smtp.port).send(message, "花子@例え.jp")
        (received,) = smtp.messages()
    # The sink hands UTF-8 bytes of the envelope and headers over surrogate-escaped.
    assert [utf8(r) for r in received.recipients] == ["花子@例え.jp"]
    assert [utf8(a.addr_spec) for a in received.message["To"].addresses] == ["花子@例え.jp"]
    assert "山田 花子" in received.message.get_content()


def utf8(escaped: str) -> str:
    return escaped.encode("utf-8", "surrogateescape").decode()


def test_a_relay_without_smtputf8_refuses_the_recipient_not_the_record() -> None:
    message = confirmation_message("ce-5", "花子@例え.jp", "Hanako", uuid4())
    with smtp_sink(smtputf8=False) as smtp:
        with pytest.raises(InvalidRecipientError):
            SmtpMailer(smtp.host, smtp.port).send(message, "花子@例え.jp")
        assert smtp.messages() == []
