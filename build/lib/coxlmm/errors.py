"""User-facing errors: one clear paragraph naming the bad value and what is accepted.

The CLI catches `CoxlmmError`, prints its message without a traceback and exits with status 2.
"""


class CoxlmmError(Exception):
    """A problem with the user's input or environment, explained in one paragraph."""
