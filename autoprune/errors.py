"""Errors a user can cause.

Every problem that the user can fix (a wrong name, a missing file, a value out of range)
is raised as :class:`UserError`. The CLI prints its message on one line and exits with
status 2, without a traceback; library callers can catch it like any other exception.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: the message names the input, the problem and the fix."""
