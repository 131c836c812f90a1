"""Auditors' tools over the event log: export, replay (asking the domain's rules), hash-chain
verification, re-shredding after a restore, signed erasure receipts, and the erasure proof that
walks the registry of resting places."""
