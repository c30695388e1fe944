"""Errors users are meant to read. The CLI prints them without a traceback (launch/errors.py)."""


class GlottaError(Exception):
    """Base class: the message names the file, shard, key or config field at fault."""


class ConfigError(GlottaError):
    """A config key or value is invalid; raised before any work starts."""


class DataError(GlottaError):
    """Bad input data (corrupt shard, missing field, hash mismatch, ...)."""
