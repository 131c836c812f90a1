"""Auditors' tools over the event log: export, replay, hash-chain verification, re-shredding
after a restore, and the erasure proof."""
