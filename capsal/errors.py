"""Errors a user can cause. CLIs print them as one line and exit with code 2; bugs keep their traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import InstantiationException


class UserError(ValueError):
    """Bad input or configuration: the message says what is wrong, where, and how to fix it."""


class MissingJavaError(UserError):
    """METEOR and the PTB tokenizer run on Java."""


def _user_error(error: BaseException | None) -> UserError | None:
    """The UserError behind ``error``, looking through Hydra's instantiation wrapper."""
    while error is not None:
        if isinstance(error, UserError):
            return error
        if not isinstance(error, InstantiationException):
            return None
        error = error.__cause__
    return None


@contextmanager
def exit_on_user_error(program: str) -> Iterator[None]:
    """Print ``program: error: <message>`` and exit 2 for errors the user can fix; re-raise bugs."""
    try:
        yield
    except (UserError, InstantiationException) as error:
        user_error = _user_error(error)
        if user_error is None:
            raise
        print(f"{program}: error: {user_error}", file=sys.stderr)
        sys.exit(2)
