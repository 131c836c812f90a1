"""The erasure process, one home per part:

- `process`: confirmations recorded, `Purged` recorded once every erasing service confirmed;
- `intake`: the consumer kit's handler that turns confirmation records into confirmations;
- `refusals`: which confirmations are refused, and how many were;
- `records`: the confirmations and ops' retry requests, the two tables beside the event store;
- `status`: the one erasure status and its vocabulary, which every reader computes with;
- `queries`: one account's status from the event store.
"""
