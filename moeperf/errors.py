"""Exceptions that map to the CLI's exit codes (docs/architecture.md, "Contracts").

UserError  -> exit 2: bad input (unknown preset, impossible shape, unreadable file...).
CheckFailed -> exit 1: a check ran and failed (regression, mismatch, claim not met).
"""


class UserError(Exception):
    """Bad input. The message is printed as one line on stderr; exit code 2."""

    exit_code = 2


class CheckFailed(Exception):
    """A requested check failed; exit code 1."""

    exit_code = 1
