"""Exceptions that mean "the user asked for something wrong" (exit status 2 in the CLI)."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from a user: a missing file, a bad argument, a bad config.

    The CLI prints its message on one line and exits with status 2, never a traceback.
    """
