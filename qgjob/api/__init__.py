"""The HTTP API (starlette)."""
