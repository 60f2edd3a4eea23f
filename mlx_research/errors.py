"""Errors that end a run with one line naming the problem (leaf module: imports nothing)."""


class ConfigError(ValueError):
    """A config problem, reported as one line naming the key."""
