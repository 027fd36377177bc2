"""The one base class of the errors a user can cause and fix: the entry points print their message
as one line on stderr and exit with code 2, with no traceback (--debug shows it)."""


class UserError(Exception):
    """Something in the user's command, config, files or machine; the message says what to do."""
