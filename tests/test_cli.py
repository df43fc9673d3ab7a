"""What every command line shares: one-line user errors and their exit statuses."""

import pytest

from bert_tf2 import cli


def _failing(error: BaseException):
    def main():
        raise error
    return cli.one_line_errors("tool")(main)


@pytest.mark.parametrize("error, status", [
    (cli.UserError("--x=1 is out of range; pass --x=2"), 1),
    (cli.Interrupted("interrupted; nothing was written to out.jsonl"), 130),
])
def test_a_user_error_is_one_line_on_stderr_and_an_exit_status(error, status, capsys):
    with pytest.raises(SystemExit) as exited:
        _failing(error)()
    assert exited.value.code == status
    assert capsys.readouterr().err == f"tool: {error}\n"


def test_any_other_error_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        _failing(ZeroDivisionError("a bug"))()
