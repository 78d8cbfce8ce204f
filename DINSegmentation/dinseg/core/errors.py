"""Errors that reach the user as one clear line (the CLI prints them and exits non-zero)."""


class DinsegError(Exception):
    """Base of the errors whose message is meant for the user."""


class InputError(DinsegError, ValueError):
    """The input image, data set or path cannot be used."""


class ModelError(DinsegError):
    """A model card or its weights are missing, unknown, or fail their checksum."""


class ConfigError(DinsegError, ValueError):
    """A configuration (training, enhancement, network) has an unknown key or a bad value."""


class OutputError(DinsegError, OSError):
    """An output file cannot be written (read-only or full file system, no permission); nothing was left."""
