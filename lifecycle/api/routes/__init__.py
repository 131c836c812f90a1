"""The API's routers, one module per surface; what they share is in `lifecycle.api.deps`."""
