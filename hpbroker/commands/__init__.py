"""Subcommands of the ``hpbroker`` CLI, one module per group."""


class UserError(Exception):
    """Something the user can fix; printed as one line, exit ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code
