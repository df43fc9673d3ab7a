"""What every command line shares: a user's mistake ends as one line and exit status 1.

  if __name__ == "__main__":
      cli.run("predict", main, define_flags)

An error the user can fix (a flag, a file, a row) is a `UserError` whose message names the
flag or file:line and says what to do; the command prints `NAME: message` on stderr and exits
with status 1 (130 for an `Interrupted` one), without a traceback (with `--verbosity=1` the
traceback is shown too). A flag the command does not define, a flag value absl refuses and a
required flag left out end the same way, in one line (absl's own handling prints the command's
whole docstring, or two lines). Any other exception is a bug and keeps its traceback. Imports
no TensorFlow.
"""

import functools
import sys
from typing import Callable, List, Mapping, Optional, Sequence

from absl import app, flags, logging


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
            except (UserError, app.UsageError) as error:  # absl's, raised by a library
                if logging.level_debug():
                    raise
                print(f"{name}: {error}", file=sys.stderr)
                sys.exit(getattr(error, "exit_status", 1))

        return wrapped

    return decorate


def run(name: str, main: Callable[[Sequence[str]], None],
        define_flags: Callable[[], None],
        flags_parser: Optional[Callable[[Sequence[str]], Sequence[str]]] = None,
        argv: Optional[Sequence[str]] = None,
        other_commands_flags: Optional[Mapping[str, str]] = None) -> None:
    """Defines the command's flags, parses them and runs `main` with one-line user errors.

    `flags_parser` replaces `parse_flags` (it returns the arguments `main` gets):
    bert_tf2.beam_predict hands the flags it does not define to Apache Beam. `argv` replaces
    sys.argv (the program name first): bert_tf2.quickstart puts its flag file's flags before
    the user's. `other_commands_flags` ({flag: what to do instead}) says more about flags of
    other commands that a user may pass to this one by mistake.
    """
    define_flags()
    if flags_parser is None:
        flags_parser = functools.partial(parse_flags, name,
                                         other_commands_flags=other_commands_flags or {})
    app.run(one_line_errors(name)(main), argv=None if argv is None else list(argv),
            flags_parser=flags_parser)


def parse_flags(name: str, argv: Sequence[str],
                flag_values: flags.FlagValues = flags.FLAGS,
                other_commands_flags: Optional[Mapping[str, str]] = None) -> List[str]:
    """Parses `argv` into `flag_values` and returns the arguments left; a flag it does not
    define, or a value it refuses, ends as one line `NAME: ...` on stderr and status 1."""
    try:
        return flag_values(list(argv))
    except flags.UnrecognizedFlagError as error:
        advice = other_commands_flags or {}
        flag = error.flagname
        message = unknown_flag_message(name, flag, error.flagvalue, advice.get(
            flag, advice.get(flag[2:]) if flag.startswith("no") else None))
    except flags.Error as error:
        message = f"{error} (see --helpfull)"
    print(f"{name}: {message}", file=sys.stderr)
    sys.exit(1)


def unknown_flag_message(name: str, flag: str, value: str, advice: Optional[str]) -> str:
    """'--task is not a flag of predict: ...' with the advice, else where the flags are."""
    given = value.split("=", 1)[0] if value else f"--{flag}"
    return f"{given} is not a flag of {name}: " + (
        advice or f"`python -m bert_tf2.{name} --helpfull` lists them")
