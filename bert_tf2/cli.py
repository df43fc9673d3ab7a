"""What every command line shares: a user's mistake ends as one line and exit status 1.

  if __name__ == "__main__":
      cli.run("predict", main, define_flags)

An error the user can fix (a flag, a file, a row) is a `UserError` whose message names the
flag or file:line and says what to do; the command prints `NAME: message` on stderr and exits
with status 1 (130 for an `Interrupted` one), without a traceback (with `--verbosity=1` the
traceback is shown too). Any other exception is a bug and keeps its traceback. Imports no
TensorFlow.
"""

import functools
import sys
from typing import Callable, Optional, Sequence

from absl import app, logging


class UserError(Exception):
    """A mistake the user can fix; the message says which flag, file or row, and how."""

    exit_status = 1


class Interrupted(UserError):
    """The user stopped the command (Ctrl-C); the message says what was left done."""

    exit_status = 130  # the shells' status for a command ended by SIGINT


def one_line_errors(name: str):
    """Decorates a `main`: a UserError ends as `NAME: message` on stderr and its exit status
    (1; 130 for `Interrupted`)."""
    def decorate(main: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(main)
        def wrapped(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except UserError as error:
                if logging.level_debug():
                    raise
                print(f"{name}: {error}", file=sys.stderr)
                sys.exit(error.exit_status)

        return wrapped

    return decorate


def run(name: str, main: Callable[[Sequence[str]], None],
        define_flags: Callable[[], None],
        flags_parser: Optional[Callable[[Sequence[str]], Sequence[str]]] = None,
        argv: Optional[Sequence[str]] = None) -> None:
    """Defines the command's flags, parses them and runs `main` with one-line user errors.

    `flags_parser` replaces absl's (it returns the arguments `main` gets): bert_tf2.beam_predict
    hands the flags it does not define to Apache Beam. `argv` replaces sys.argv (the program
    name first): bert_tf2.quickstart puts its flag file's flags before the user's.
    """
    define_flags()
    options = {} if flags_parser is None else {"flags_parser": flags_parser}
    app.run(one_line_errors(name)(main), argv=None if argv is None else list(argv), **options)
