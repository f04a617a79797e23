"""The HTTP app (Starlette), its request parsing, errors, metrics, OpenAPI schema and CLI."""
