"""Errors a user can cause. CLIs print them as one line and exit with code 2; bugs keep their traceback."""


class UserError(ValueError):
    """Bad input or configuration: the message says what is wrong, where, and how to fix it."""


class MissingJavaError(UserError):
    """METEOR and the PTB tokenizer run on Java."""
