"""Errors that report a user's or a data file's problem; the CLI prints them as one message and exits 2.

Everything else (a bug) keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix: the message names the file, record, step or params key, and what to do."""


class ParamsError(UserError, ValueError):
    """params.yaml is missing, unreadable or does not match the schema; the message names the key path."""


class DataError(UserError, ValueError):
    """A data file is missing, malformed or corrupt, or could not be fetched; the message names file and record."""


class TrainingDiverged(UserError, RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the last all-finite checkpoint is kept on disk."""


class WrongModel(UserError):
    """A model file belongs to another run (or another version of its params) than the one being evaluated."""
