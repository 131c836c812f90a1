"""Key operations at the service layer: rotate, destroy what is due, and say when the master
key must still leave the configuration."""

from __future__ import annotations

from pathlib import Path

from lifecycle.application import Accounts
from lifecycle.services.keys import Keys
from lifecycle.settings import Settings


def test_rotate_then_destroy_flags_a_master_key_still_configured(
    settings: Settings, tmp_path: Path
) -> None:
    rotating = settings.model_copy(
        update={"keyring_dir": tmp_path / "keys", "key_retention_days": 0.0}
    )
    accounts = Accounts(env=rotating.application_env())
    try:
        accounts.register(email="k@keys.example", display_name="Kei", consent_version="v1")
        keys = Keys(accounts, rotating, batch_size=1)
        rotated = keys.rotate()
        assert (rotated["version"], rotated["retired"]) == (2, [1])
        destroyed = keys.destroy_due()
        assert destroyed.versions == [1]
        assert destroyed.master_key_still_configured is (rotating.master_key is not None)
        kek = [v for v in keys.status() if v["purpose"] == "kek"]
        assert [v["version"] for v in kek] == [1, 2]
    finally:
        accounts.close()
