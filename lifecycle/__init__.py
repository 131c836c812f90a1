"""lifecycle: the service that owns each member account's life, from registration to erasure."""
