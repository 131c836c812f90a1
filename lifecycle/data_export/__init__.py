"""A member's data export, one home per part:

- `service`: the rules (`DataExports`): request, status, download, parts in, retry, expiry,
  cancellation; what routes and workers call;
- `keys`: each export's private key, wrapped by the keyring, destroyed at its end;
- `parts`: the sealed chunks of every part, as received;
- `document`: the account's own section, and the streamed document;
- `intake`: the consumer kit's handler that takes the services' parts in.
"""
