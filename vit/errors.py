"""Exceptions a user can cause. The CLI turns each into one line on stderr and exit code 2."""


class VitError(Exception):
    """Base class for errors caused by user input (bad paths, configs, files)."""


class ConfigError(VitError, ValueError):
    """An unknown config key, a wrongly typed value, or an inconsistent setting."""


class DataError(VitError):
    """A missing or empty data folder, a class with no readable images, an unreadable image."""


class CheckpointError(VitError):
    """A file that is not a checkpoint, or one this version cannot load."""


class OutputError(VitError):
    """A file or folder that cannot be written: a path under a file, no permission, a full disk."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type when the message is empty)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
