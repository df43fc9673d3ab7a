"""The recipe's runs side by side: fine-tune the whole encoder, its top layers, or the head only.

Each case is one `python -m bert_tf2.train` run of the quickstart (configs/quickstart.flags: the
built-in corpus, the shipped 2-layer tiny encoder) with another --trainable_encoder_layers, in a
process of its own, one after the other, all on the same hub modules (built first, untimed).
For each it reports dev and test accuracy, the training time the run logs ("Finished after N
optimizer steps in S s": from the start of training to its end, a frozen encoder's pooled
outputs included), the whole command's wall time, and its peak memory (the process's maximum
resident set size). It prints a markdown table, with the commands, and writes it as its
section of docs/benchmarks.md (docs/frozen_encoder.md links there):

  .venv/bin/python -m benchmarks.frozen_encoder_benchmark
"""

import json
import re
import shutil
from typing import Dict, List, Sequence

from absl import app, flags, logging

from benchmarks import report

FLAGS = flags.FLAGS
flags.DEFINE_string("output", str(report.BENCHMARKS_MD),
                    "Markdown file whose section is written ('' to only print).")

TITLE = "## Fine-tuning everything against freezing the encoder"
OUTPUT_ROOT = "runs/frozen_encoder_benchmark"
HUB = f"{OUTPUT_ROOT}/hub"
QUICKSTART = "--flagfile=configs/quickstart.flags"
# Row name -> the train flags of the case (its output directories are added).
CASES = {
    "-1: the whole encoder (the quickstart)": [QUICKSTART],
    "2: both transformer layers and the pooler": [QUICKSTART, "--trainable_encoder_layers=2"],
    "0: the head only": [QUICKSTART, "--trainable_encoder_layers=0", "--learning_rate=1e-3"],
    "0: the head only, 20 epochs (quickstart_frozen.flags)": [
        "--flagfile=configs/quickstart_frozen.flags"],
}
BUILD_MODULES = report.quickstart_hub_modules_args(HUB)
PARAMETERS = re.compile(r"trainable: [\d,]+ variables, ([\d,]+) parameters; "
                        r"frozen: [\d,]+ variables, ([\d,]+) parameters")
FINISHED = re.compile(r"Finished after (\d+) optimizer steps in ([\d.]+) s")
POOLED = re.compile(r"pooled outputs of .* computed in ([\d.]+) s")


def train_args(index: int, case_flags: Sequence[str]) -> List[str]:
    case_dir = f"{OUTPUT_ROOT}/case{index}"
    return ["-m", "bert_tf2.train", *case_flags, f"--preprocess_handle={HUB}/preprocess",
            f"--encoder_handle={HUB}/encoder", f"--model_dir={case_dir}/model",
            f"--export_dir={case_dir}/export"]


def measure_case(index: int, case_flags: Sequence[str]) -> Dict[str, object]:
    case_dir = report.REPO_ROOT / OUTPUT_ROOT / f"case{index}"
    shutil.rmtree(case_dir, ignore_errors=True)  # a new run, not a resumed one
    case_dir.mkdir(parents=True)
    log_path = str(case_dir / "train.log")
    row = report.run_measured(train_args(index, case_flags), log_path)
    with open(log_path, encoding="utf-8") as f:
        log = f.read()
    metrics = json.loads((case_dir / "model" / "metrics.json").read_text(encoding="utf-8"))
    trainable, frozen = PARAMETERS.search(log).groups()
    steps, training_s = FINISHED.search(log).groups()
    pooled = POOLED.search(log)
    return dict(row, trainable=trainable, frozen=frozen, steps=int(steps),
                training_s=float(training_s), pooled_s=float(pooled[1]) if pooled else None,
                dev=metrics["dev"]["accuracy"], test=metrics["test"]["accuracy"])


def markdown_section(rows: Dict[str, Dict[str, object]]) -> str:
    lines = ["| --trainable_encoder_layers | trainable / frozen parameters | steps | "
             "test accuracy | dev accuracy | training (pooled outputs) | whole run | "
             "peak memory |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        pooled = f" ({row['pooled_s']:.0f} s)" if row["pooled_s"] is not None else ""
        lines.append(f"| {name} | {row['trainable']} / {row['frozen']} | {row['steps']:,} | "
                     f"{row['test']:.1%} | {row['dev']:.1%} | {row['training_s']:.0f} s"
                     f"{pooled} | {row['wall_s']:.0f} s | {row['peak_mib']:,.0f} MiB |")
    commands = [f".venv/bin/python {' '.join(BUILD_MODULES)}"] + [
        f".venv/bin/python {' '.join(train_args(index, case_flags))}"
        for index, case_flags in enumerate(CASES.values())]
    return (f"{TITLE}\n\n`.venv/bin/python -m benchmarks.frozen_encoder_benchmark` on "
            f"{report.machine_line()}, one run after the other, each a process of its own. "
            "Training: from the start of training to its end, as the run logs it (with the "
            "encoder frozen, computing the pooled outputs included); whole run: the command, "
            "TensorFlow's start, evaluation and export included; peak memory: the process's "
            "maximum resident set size.\n\n" + "\n".join(lines) + report.commands_block(commands))


def main(argv):
    del argv
    report.build_hub_modules(OUTPUT_ROOT, BUILD_MODULES, HUB)
    rows = {}
    for index, (name, case_flags) in enumerate(CASES.items()):
        rows[name] = measure_case(index, case_flags)
        logging.info("%s: %s", name, rows[name])
    section = markdown_section(rows)
    report.publish(section, FLAGS.output, TITLE)


if __name__ == "__main__":
    app.run(main)
