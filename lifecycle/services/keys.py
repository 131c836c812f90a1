"""The key hierarchy's operations for ops (`lifecycle keys ...`): status, KEK rotation, a new
signing version, destruction of retired versions past their retention (`lifecycle.rotation`
does the work; this says what ops are told)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lifecycle.application import Accounts
from lifecycle.rotation import KeyRotation
from lifecycle.settings import Settings


@dataclass(frozen=True)
class Destroyed:
    versions: list[int]
    # KEK version 1 came from LIFECYCLE_MASTER_KEY and is destroyed, but the key is still
    # configured: it must go from the configuration and every place it is stored.
    master_key_still_configured: bool


class Keys:
    def __init__(
        self,
        accounts: Accounts,
        settings: Settings,
        *,
        batch_size: int = 500,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.accounts = accounts
        self.settings = settings
        self.rotation = KeyRotation(
            accounts.vault, settings.key_policy, batch_size=batch_size, progress=progress
        )

    def status(self) -> list[dict[str, Any]]:
        return self.rotation.status()

    def rotate(self) -> dict[str, Any]:
        return self.rotation.rotate().as_dict()

    def new_signing_version(self) -> int:
        return self.rotation.new_signing_version()

    def destroy_due(self) -> Destroyed:
        destroyed = self.rotation.destroy_due()
        master = [
            v.version
            for v in self.accounts.keyring.versions("kek")
            if v.origin == "master" and not v.live
        ]
        return Destroyed(destroyed, bool(master) and self.settings.master_key is not None)
