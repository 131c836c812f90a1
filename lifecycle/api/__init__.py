"""The member-facing HTTP API (FastAPI); build it with `create_app(settings)`."""

from __future__ import annotations

from lifecycle.api.app import create_app
from lifecycle.api.auth import print_generated_tokens, with_generated_tokens

__all__ = ["create_app", "print_generated_tokens", "with_generated_tokens"]
