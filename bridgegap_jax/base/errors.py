"""The one base class of the errors a user can cause and fix: the entry points print their message
as one line on stderr and exit with code 2, with no traceback (--debug shows it)."""

import argparse


class UserError(Exception):
    """Something in the user's command, config, files or machine; the message says what to do."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes end as every other user error: one line on stderr, exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull")


def answer_help(argv: list[str]) -> None:
    """For absl commands: a help request prints the usage and exits 0 (absl's own --help exits 1)."""
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        from absl import app

        app.usage(shorthelp="--helpfull" not in argv, writeto_stdout=True, exitcode=0)
