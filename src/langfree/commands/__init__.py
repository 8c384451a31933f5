"""CLI command modules; each exposes ``register(...)`` called by ``langfree.cli``."""
