"""The public Kafka contract of the lifecycle service: topics, payloads, envelope, JSON Schemas.

`schemas.contract` holds the code; `schemas/v1/*.json` are generated from it by
`python -m schemas.export` (or `lifecycle schemas export`).
"""

from schemas.contract import (
    CONSUMER_GROUPS,
    ERASING_SERVICES,
    ERASURE_GROUP,
    MODELS,
    ContractError,
    ContractModel,
    Envelope,
    ErasureConfirmedV1,
    GiftClaimedV1,
    PreferencesEditedV1,
    ProfileV1,
    PurgedV1,
    Record,
    RegisteredV1,
    ScoutReceivedV1,
    TopicNames,
    WithdrawalRequestedV1,
    decode_record,
    encode_erasure_confirmed,
    encode_record,
    encode_tombstone,
)

__all__ = [
    "CONSUMER_GROUPS",
    "ERASING_SERVICES",
    "ERASURE_GROUP",
    "MODELS",
    "ContractError",
    "ContractModel",
    "Envelope",
    "ErasureConfirmedV1",
    "GiftClaimedV1",
    "PreferencesEditedV1",
    "ProfileV1",
    "PurgedV1",
    "Record",
    "RegisteredV1",
    "ScoutReceivedV1",
    "TopicNames",
    "WithdrawalRequestedV1",
    "decode_record",
    "encode_erasure_confirmed",
    "encode_record",
    "encode_tombstone",
]
