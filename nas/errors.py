"""The one exception type for mistakes a user can fix.

The CLI prints a `NasError` as a single line (no traceback) and exits with status 2.
It subclasses `ValueError` so library callers can catch it the usual way.
"""


class NasError(ValueError):
    """Bad input: the message names the field, what was given and what is allowed."""


class PoorFitError(NasError):
    """A latency table that failed its validation targets (the table itself is kept)."""
