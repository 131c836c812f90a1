"""The base of every versioned model of the contract: its name gives its CloudEvents type and
its JSON Schema file. Its own module so that the payload modules (`schemas.contract`,
`schemas.data_export`) can share it without importing each other in a circle."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

CE_TYPE_PREFIX = "jp.jobchange."
# Where the files written by `python -m schemas.export` are published; `ce_dataschema`
# is this base followed by the file's path under schemas/ (e.g. `v1/account.registered.v1.json`).
SCHEMA_BASE_URI = "https://schemas.jobchange.jp/lifecycle/"


class ContractModel(BaseModel):
    """A versioned payload; `event_name` gives its CloudEvents type and its schema file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_name: ClassVar[str]

    @classmethod
    def ce_type(cls) -> str:
        return CE_TYPE_PREFIX + cls.event_name

    @classmethod
    def schema_path(cls) -> str:
        """The schema file's path under schemas/, e.g. `v1/account.registered.v1.json`."""
        version = cls.event_name.rsplit(".", 1)[-1]
        return f"{version}/{cls.event_name}.json"

    @classmethod
    def dataschema(cls) -> str:
        return SCHEMA_BASE_URI + cls.schema_path()
