"""Errors that report a user's or a data file's problem; the CLI prints them as a message, not a traceback."""


class DataError(ValueError):
    """A data file is missing, malformed or corrupt, or could not be fetched; the message names file and record."""
