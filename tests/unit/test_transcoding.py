"""orjson decoding gives exactly what the library's own decoder gives, for any stored state."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, UUIDAsHex
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle.application import DateAsISO
from lifecycle.transcoding import OrjsonTranscoder


def transcoders() -> tuple[JSONTranscoder, OrjsonTranscoder]:
    library = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), DateAsISO()):
        library.register(transcoding)  # as the application registers them
    return library, OrjsonTranscoder.like(library)


LIBRARY, FASTER = transcoders()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(),
    st.sampled_from(["_type_", "_data_", '"_type_"']),
    st.datetimes(timezones=st.just(UTC)),
    st.dates(),
    st.uuids(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(["a", "_type_", "_data_", "b"]), inner, max_size=3),
    ),
    max_leaves=12,
)


def outcome(transcoder: JSONTranscoder, data: bytes) -> Any:
    try:
        return transcoder.decode(data)
    except Exception as error:  # the same refusal counts as the same outcome
        return type(error)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=8), values, max_size=6))
def test_decodes_like_the_library(state: dict[str, Any]) -> None:
    data = LIBRARY.encode(state)

    assert outcome(FASTER, data) == outcome(LIBRARY, data)


def test_an_event_state_decodes_through_the_fast_path() -> None:
    state = {
        "timestamp": datetime(2026, 6, 1, tzinfo=UTC),
        "originator_topic": "lifecycle.domain:Account",
        "start_date": date(2026, 7, 1),
        "account_id": UUID(int=7),
        "profile": {"prefecture": "Tokyo"},
    }
    data = LIBRARY.encode(state)

    assert FASTER.decode(data) == state == LIBRARY.decode(data)


def test_what_orjson_refuses_goes_to_the_library() -> None:
    data = LIBRARY.encode({"big": 2**80, "nan": float("inf")})

    assert FASTER.decode(data) == LIBRARY.decode(data)


def test_integers_just_past_64_bits_stay_integers() -> None:
    """orjson reads them as floats without complaint (hypothesis found -2**63 - 1)."""
    for big in (-(2**63) - 1, 2**64, 2**80, -(2**80)):
        data = LIBRARY.encode({"n": big})
        decoded = FASTER.decode(data)
        assert decoded == {"n": big}
        assert type(decoded["n"]) is int
