"""Errors that the CLI turns into one clear line and a non-zero exit."""


class ClueRunError(Exception):
    """Base class for errors a user can fix (bad config, bad data, missing files)."""


class ConfigError(ClueRunError):
    pass


class DataError(ClueRunError):
    pass


class ModelError(ClueRunError):
    pass
