"""The exceptions bastion raises for user mistakes (a leaf module: it imports nothing).

Every error a user can cause -- a bad argument, config key or value, a file that is missing,
corrupt or not bastion's, a run folder held by another process -- is a ``BastionError``.
The command line catches exactly these and prints their message (one or two lines naming
the file, key or value and the valid choices) with exit code 2; anything else is a bug and
keeps its traceback. The classes also derive from the built-in exception a Python caller
would expect (``ValueError``, ``TypeError``, ``FileNotFoundError``), so ``except
ValueError`` keeps working.
"""

from __future__ import annotations


class BastionError(Exception):
    """Base class of every user-facing error of bastion."""


class InputError(BastionError, ValueError):
    """An argument, tensor or config value outside its valid range or choices."""


class InputTypeError(BastionError, TypeError):
    """An argument, tensor or config value of the wrong type, dtype or shape kind."""


class MissingFileError(BastionError, FileNotFoundError):
    """A file or folder the user named (or a run folder needs) does not exist."""


class OutputError(BastionError, PermissionError):
    """An output path (run folder, record, certification file) that cannot be written."""

    @classmethod
    def of(cls, path: object, err: OSError) -> OutputError:
        """The error for ``err`` raised while creating or writing ``path``."""
        return cls(f"cannot write {str(path)!r}: {err.strerror or err}; choose a folder you "
                   "can write to (--out)")


class ConfigError(InputError):
    """A config file or ``--set`` override that cannot be read or does not validate."""


class RunFolderError(BastionError, ValueError):
    """A run folder that cannot be used as asked (other config, not a run folder, ...)."""


class CheckpointError(RunFolderError):
    """A checkpoint or metadata file that is truncated, corrupt or points outside its run."""


class RunLockedError(RunFolderError):
    """Another process holds the run folder's lock (one writer at a time)."""


__all__ = [
    "BastionError",
    "CheckpointError",
    "ConfigError",
    "InputError",
    "InputTypeError",
    "MissingFileError",
    "OutputError",
    "RunFolderError",
    "RunLockedError",
]
