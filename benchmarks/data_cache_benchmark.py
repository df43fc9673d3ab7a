"""Peak memory of a short training run on ever more rows: held in memory against streamed.

For each --rows size, a CSV of that many training rows (the built-in corpus's training
reviews, repeated) and the corpus's dev reviews; then, each a process of its own, one after
the other, on the quickstart's model (configs/quickstart.flags: hub modules built first,
untimed):

  in memory   python -m bert_tf2.train --train_steps=20 ...
  prepare     python -m bert_tf2.prepare_data ... --data_cache=D      (rows/s)
  streamed    python -m bert_tf2.train --train_steps=20 ... --data_cache=D  (reuses D)

and reports each run's peak resident memory, wall time and training time (the "Finished
after N optimizer steps in S s" the run logs). It prints a markdown table with the commands
and writes it as its section of docs/benchmarks.md:

  .venv/bin/python -m benchmarks.data_cache_benchmark --rows=100000,1000000
  .venv/bin/python -m benchmarks.data_cache_benchmark --rows=10000 --output=   # a smoke
"""

import csv
import re
import shutil
from typing import Dict, List

from absl import app, flags, logging

from benchmarks import report

FLAGS = flags.FLAGS
flags.DEFINE_list("rows", ["100000", "1000000", "10000000"], "Training rows of each size.")
flags.DEFINE_integer("train_steps", 20, "Optimizer steps of each training run.")
flags.DEFINE_string("output", str(report.BENCHMARKS_MD),
                    "Markdown file whose section is written ('' to only print).")

TITLE = "## Training data of any size: held in memory against streamed (--data_cache)"
OUTPUT_ROOT = "runs/data_cache_benchmark"
HUB = f"{OUTPUT_ROOT}/hub"
BUILD_MODULES = report.quickstart_hub_modules_args(HUB)
FINISHED = re.compile(r"Finished after (\d+) optimizer steps in ([\d.]+) s")
PREPARED = re.compile(r"train: (\d+) examples")


def write_rows(path: str, texts_labels, rows: int) -> None:
    """`rows` rows of `texts_labels`, repeated, as a text,label CSV."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(rows):
            writer.writerow(texts_labels[i % len(texts_labels)])


def train_args(case_dir: str, train_file: str, dev_file: str, *extra: str) -> List[str]:
    return ["-m", "bert_tf2.train", "--flagfile=configs/quickstart.flags",
            f"--preprocess_handle={HUB}/preprocess", f"--encoder_handle={HUB}/encoder",
            f"--train_data={train_file}", f"--eval_data={dev_file}",
            f"--train_steps={FLAGS.train_steps}", f"--model_dir={case_dir}/model",
            f"--export_dir={case_dir}/export", *extra]


def measure_size(rows: int) -> Dict[str, Dict[str, float]]:
    from bert_tf2 import data  # pylint: disable=g-import-not-at-top
    size_dir = f"{OUTPUT_ROOT}/{rows}"
    shutil.rmtree(report.REPO_ROOT / size_dir, ignore_errors=True)
    (report.REPO_ROOT / size_dir).mkdir(parents=True)
    splits = data.builtin_corpus_splits()
    train_file, dev_file = f"{size_dir}/train.csv", f"{size_dir}/dev.csv"
    write_rows(str(report.REPO_ROOT / train_file),
               list(zip(splits["train"].texts, splits["train"].labels)), rows)
    write_rows(str(report.REPO_ROOT / dev_file),
               list(zip(splits["dev"].texts, splits["dev"].labels)), len(splits["dev"]))
    cache = f"--data_cache={size_dir}/cache"
    cases = {
        "in memory": train_args(f"{size_dir}/memory", train_file, dev_file),
        "prepare": ["-m", "bert_tf2.prepare_data", f"--train_data={train_file}",
                    f"--eval_data={dev_file}", cache],
        "streamed": train_args(f"{size_dir}/streamed", train_file, dev_file, cache),
    }
    results = {}
    for name, args in cases.items():
        log_path = str(report.REPO_ROOT / size_dir / f"{name.replace(' ', '_')}.log")
        results[name] = dict(report.run_measured(args, log_path), args=args)
        with open(log_path, encoding="utf-8") as f:
            finished = FINISHED.search(f.read())
        results[name]["training_s"] = float(finished[2]) if finished else None
        logging.info("%d rows, %s: %s", rows, name, results[name])
    return results


def markdown_section(by_size: Dict[int, Dict[str, Dict[str, float]]]) -> str:
    lines = ["| training rows | in memory: peak memory | streamed: peak memory | "
             "in memory: training | streamed: training | preparation: rows/s, peak memory |",
             "|---:|---:|---:|---:|---:|---:|"]
    for rows, cases in by_size.items():
        memory, streamed, prepare = cases["in memory"], cases["streamed"], cases["prepare"]
        lines.append(
            f"| {rows:,} | {memory['peak_mib']:,.0f} MiB | {streamed['peak_mib']:,.0f} MiB | "
            f"{memory['training_s']:.1f} s | {streamed['training_s']:.1f} s | "
            f"{rows / prepare['wall_s']:,.0f}, {prepare['peak_mib']:,.0f} MiB |")
    commands = [f".venv/bin/python {' '.join(BUILD_MODULES)}"] + [
        f".venv/bin/python {' '.join(case['args'])}"
        for cases in by_size.values() for case in cases.values()]
    return (f"{TITLE}\n\n`.venv/bin/python -m benchmarks.data_cache_benchmark "
            f"--rows={','.join(map(str, by_size))}` on {report.machine_line()}, each command a "
            f"process of its own, one after the other: `train --train_steps="
            f"{FLAGS.train_steps}` of the quickstart's model on that many rows (the built-in "
            "corpus's training reviews repeated), with its dev reviews; peak memory: the "
            "process's maximum resident set size; training: as the run logs it; preparation: "
            "rows over the wall time of `bert_tf2.prepare_data`, TensorFlow's start "
            "included.\n\n" + "\n".join(lines) + report.commands_block(commands))


def main(argv):
    del argv
    report.build_hub_modules(OUTPUT_ROOT, BUILD_MODULES, HUB)
    by_size = {int(rows): measure_size(int(rows)) for rows in FLAGS.rows}
    report.publish(markdown_section(by_size), FLAGS.output, TITLE)


if __name__ == "__main__":
    app.run(main)
