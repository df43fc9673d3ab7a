"""The quickstart as one command that runs from any directory, the package installed or not.

  python -m bert_tf2.quickstart              # the demo run, under ./runs/quickstart
  python -m bert_tf2.quickstart --epochs=1   # other flags go to bert_tf2.train

It is `python -m bert_tf2.train --flagfile=configs/quickstart.flags` with the flag file, the
vocab, the BERT config and the pretrained encoder taken from the package (`configs_dir()`), and
its outputs (hub modules, model_dir, export_dir) in ./runs/quickstart. Run again, it replaces
its own earlier demo run there and says so, or resumes it where that run was interrupted; a
./runs/quickstart it did not make, or one whose model another training run replaced, is
refused and left as it is. Flags that would put its outputs elsewhere are refused: that is
`bert_tf2.train` with the same flag file.
"""

import hashlib
import os
import sys
from typing import Dict, List, Optional, Sequence

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import flags, logging

from bert_tf2 import cli
from bert_tf2 import config as config_lib
from bert_tf2 import crash_safety
from bert_tf2 import io_utils
from bert_tf2 import train

FLAGS = flags.FLAGS
FLAG_FILE = "quickstart.flags"
RUN_DIR = io_utils.join("runs", "quickstart")
# RUN_DIR/quickstart.json: written by this command into a directory it makes, with the sha256 of
# the run_config.json its run wrote (null until the run ends, or where it was killed): a RUN_DIR
# without it, or whose model_dir holds another run_config.json, is not the quickstart's to
# replace.
MARKER_FILE = "quickstart.json"
MADE_BY = "python -m bert_tf2.quickstart"
# What a demo run leaves in RUN_DIR beside the marker, as the flag file names them; a rerun
# removes these and nothing else.
OUTPUT_FLAGS = ("preprocess_handle", "encoder_handle", "model_dir", "export_dir")
# Flags a quickstart run leaves as its flag file sets them (--run_config: unset).
FIXED_FLAGS = OUTPUT_FLAGS + ("run_config",)
_SHIPPED_PREFIX = "configs/"


def configs_dir() -> str:
    """The shipped configs: bert_tf2/configs in an installed package (pyproject.toml maps the
    checkout's top-level configs/ there), the top-level configs/ in a checkout."""
    package_dir = io_utils.dirname(__file__)
    candidates = (io_utils.join(package_dir, "configs"),
                  io_utils.join(io_utils.dirname(package_dir), "configs"))
    for candidate in candidates:
        if io_utils.isfile(io_utils.join(candidate, FLAG_FILE)):
            return candidate
    raise cli.UserError(f"the shipped configs ({FLAG_FILE}) are in neither {candidates[0]} nor "
                        f"{candidates[1]}: install the bert_tf2 package again, from its wheel "
                        "or with pip install . in the checkout")


def shipped_flags(name: str) -> List[str]:
    """The flags of the shipped flag file `name`, one `--flag=value` each, with the values that
    name shipped files (configs/...) made absolute paths into `configs_dir()`; the flag files
    it includes (--flagfile=configs/...) are read the same way, in place."""
    shipped = configs_dir()
    args: List[str] = []
    with io_utils.open(io_utils.join(shipped, name), encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            flag, separator, value = line.partition("=")
            if separator and value.startswith(_SHIPPED_PREFIX):
                if flag == "--flagfile":
                    args += shipped_flags(value[len(_SHIPPED_PREFIX):])
                    continue
                value = io_utils.join(shipped, value[len(_SHIPPED_PREFIX):])
            args.append(flag + separator + value)
    return args


def flag_values(args: Sequence[str]) -> Dict[str, str]:
    """{flag name: value} of `--flag=value` arguments, the last one winning (as absl does)."""
    return dict(arg[2:].split("=", 1) for arg in args if arg.startswith("--") and "=" in arg)


def check_outputs_unmoved(given: Dict[str, object], quickstart_values: Dict[str, str]) -> None:
    """Refuses flags (`given`: {name: value as parsed}) that move the demo's outputs out of
    RUN_DIR, or name a run to repeat: a rerun would then replace or resume the wrong thing."""
    for name in FIXED_FLAGS:
        value, own = given.get(name), quickstart_values.get(name)
        if value != own:
            raise cli.UserError(
                f"--{name}={value}: the quickstart keeps its outputs in ./{RUN_DIR} "
                f"(--{name}={own}): run it from another directory, or train with "
                "python -m bert_tf2.train")


def prepare_run_dir(outputs: Sequence[str], model_dir: str, *, overwrite: bool) -> None:
    """Makes RUN_DIR the quickstart's (its marker) or checks that it is, then removes the
    earlier demo run's `outputs` there, unless that run, in `model_dir`, was interrupted and is
    resumed (not with `overwrite`). One log line says which."""
    marker_path = io_utils.join(RUN_DIR, MARKER_FILE)
    if io_utils.exists(RUN_DIR) and not io_utils.isdir(RUN_DIR):
        raise cli.UserError(f"./{RUN_DIR} exists and is not a directory: move it away, or run "
                            "the quickstart from another directory")
    if not io_utils.isdir(RUN_DIR) or not io_utils.listdir(RUN_DIR):
        try:
            io_utils.makedirs(RUN_DIR)
        except OSError as error:
            raise cli.UserError(f"cannot create ./{RUN_DIR}: {error.strerror or error}; run the "
                                "quickstart from a directory you can write") from error
        write_marker(model_dir)
        return
    check_own_run_dir(marker_path, model_dir)
    backed_up = crash_safety.backed_up_step(io_utils.join(model_dir, "backup"))
    if backed_up is not None and not overwrite:
        logging.info("Resuming the interrupted quickstart run in %s from its backup of step %d",
                     model_dir, backed_up)
        return
    existing = [path for path in outputs if io_utils.exists(path)]
    if existing:
        logging.info("Replacing the earlier quickstart run in %s (removing %s)", RUN_DIR,
                     ", ".join(existing))
    for path in existing:
        if io_utils.isdir(path) and not os.path.islink(path):  # RUN_DIR is local
            io_utils.rmtree(path)
        else:  # a file, or a link (removed, not followed)
            io_utils.remove(path)


def check_own_run_dir(marker_path: str, model_dir: str) -> None:
    """Refuses a RUN_DIR that this command did not make, or whose model_dir holds a run that
    is not the one the quickstart recorded (a train run pointed there since)."""
    marker = _json_or_none(marker_path)
    if not isinstance(marker, dict) or marker.get("made_by") != MADE_BY:
        raise cli.UserError(
            f"./{RUN_DIR} exists and was not made by {MADE_BY} (it has no {MARKER_FILE} of its "
            "own); the quickstart replaces only its own runs: move it away (or delete it), or "
            "run the quickstart from another directory")
    recorded = marker.get("run_config_sha256")
    current = _sha256_or_none(io_utils.join(model_dir, config_lib.RUN_CONFIG_FILE))
    if recorded and current != recorded:
        raise cli.UserError(
            f"{model_dir} holds a run that the quickstart did not make (its "
            f"{config_lib.RUN_CONFIG_FILE} is not the one the quickstart recorded in "
            f"{marker_path}); the quickstart replaces only its own runs: move ./{RUN_DIR} "
            "away, or run the quickstart from another directory")


def write_marker(model_dir: str) -> None:
    """RUN_DIR/quickstart.json, recording the run_config.json in `model_dir` (if any)."""
    io_utils.write_json({"made_by": MADE_BY, "run_config_sha256": _sha256_or_none(
        io_utils.join(model_dir, config_lib.RUN_CONFIG_FILE))},
        io_utils.join(RUN_DIR, MARKER_FILE))


def _sha256_or_none(path: str) -> Optional[str]:
    try:
        with io_utils.open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return None


def _json_or_none(path: str) -> object:
    """The JSON value in `path`; None where there is no file or it is not JSON."""
    try:
        return io_utils.read_json(path)
    except (OSError, ValueError):
        return None


def main(argv, quickstart_values: Dict[str, str]) -> None:
    check_outputs_unmoved({name: FLAGS[name].value for name in FIXED_FLAGS}, quickstart_values)
    prepare_run_dir([quickstart_values[name] for name in OUTPUT_FLAGS], FLAGS.model_dir,
                    overwrite=FLAGS.overwrite)
    try:
        train.main(argv)
    finally:  # finished, interrupted or refused: the run_config.json in model_dir is its own
        write_marker(FLAGS.model_dir)


@cli.one_line_errors("quickstart")
def run(args: Sequence[str]) -> None:
    """The command: the shipped flag file's flags, then `args` (which override them)."""
    quickstart_args = shipped_flags(FLAG_FILE)
    quickstart_values = flag_values(quickstart_args)
    cli.run("quickstart", lambda argv: main(argv, quickstart_values), train.define_flags,
            argv=[sys.argv[0], *quickstart_args, *args])


if __name__ == "__main__":
    run(sys.argv[1:])
