"""The application services: every use case an entrypoint offers beyond the member commands,
with its rules and its record of who did what. The HTTP routes (`lifecycle.api`) and the CLI
(`lifecycle.cli`) are adapters over them: they parse, authorise by role, call one service and
map its answer or its `LifecycleError`; a second entrypoint gets the same rules for free.

- `withdrawals`: a member's withdrawal, and the cancel of their live data exports it entails;
- `actions`: who acts (`Actor`), and the tables that record what ops and auditors did;
- `dead_letters`: list, re-drive (and its refusals) and discard dead letters;
- `erasures`: ops' view of erasures, and the retry of one service's erasure;
- `audit`: an account's stored events (redacted, or decrypted for a permitted role, recorded
  first), its timeline without personal values, the hash chain's head;
- `read_models`: read models' positions and lag, a catch-up, a rebuild;
- `keys`: key status, KEK rotation, a new signing version, destruction of what is due;
- `event_log`: the whole log exported as stored, replayed against the domain's rules, its hash
  chain recomputed;
- `erasure_evidence`: re-shred after a restore, receipts found and checked, erasure proofs;
- `pipeline`: what the database says about the pipeline, for `/metrics` and `/readyz`.

The other member commands go to the application (`lifecycle.application.Accounts`) directly;
data exports have their service in `lifecycle.data_export.service`.

Services do no I/O when built; build them per call when they need a request's Kafka client.
"""
