"""The errors a user can fix: every one is a :class:`DipsyError`, whose message says what is
wrong and what to do. The CLI prints such a message on one line and the app shows it as it is;
any other exception is a bug, reported with its traceback (the CLI prints it, the app logs it
and says "internal error, see the log").

The subclasses also derive from the built-in exception a caller would expect (``ValueError``
for bad input), so ``except ValueError`` around an engine call keeps working.
"""

from __future__ import annotations


class DipsyError(Exception):
    """Base of the errors whose message is written for the user."""


class SettingsError(DipsyError, ValueError):
    """A setting or preset is invalid (unknown key, wrong type, out of range); names the key."""


class DatasetError(DipsyError, ValueError):
    """The input cannot be used as a dataset (or for the requested purpose); the message says why."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report  # what was found before giving up (a data.LoadReport), for the user


class ImageReadError(DipsyError, ValueError):
    """A file could not be read as an image; the message says which file and why."""


class TrainDataError(DipsyError, ValueError):
    """A training, test or predict input cannot be used; the message says what and what to do."""


class JobConflictError(DipsyError, ValueError):
    """The output folder holds a run made with other settings, data or models; nothing was touched."""


class ModelLoadError(DipsyError):
    """A model could not be loaded: which model, where it was looked for, and what to do; the
    library's own exception is chained as the cause."""


class UsageError(DipsyError, ValueError):
    """An action cannot run now or with these arguments (no data yet, nothing to cancel, a name
    that is empty or already taken); the message says what to do first."""
