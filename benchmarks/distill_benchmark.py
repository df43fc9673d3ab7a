"""The quickstart classifier distilled into a 1-layer student: accuracy, speed, wall time.

Trains the teacher as the quickstart does (configs/quickstart.flags, its own hub modules and
directories under runs/distill_benchmark), then distils it with
configs/quickstart_distill.flags, each a process of its own, one after the other. For both
exports it reports the test accuracy (metrics.json), the throughput of batches of 64 real
reviews (the built-in corpus's test split, in its order, through the `serving_default`
signature in this process, after one untimed pass), the median latency of one review a call,
and each command's wall time. It prints a markdown table with the commands and writes it as
its section of docs/benchmarks.md (docs/distill.md links there):

  .venv/bin/python -m benchmarks.distill_benchmark

With --suite=base the teacher is BERT-base-sized (12 layers, hidden 768, the quickstart vocab)
with random weights, trained one step on 64 reviews, and the students have 3 and 4 of its
layers (one distillation step each): only their serving speed is measured, against the
teacher's.

  .venv/bin/python -m benchmarks.distill_benchmark --suite=base --batches=5

With --suite=domain the book reviews of the built-in corpus (those that name a book, its author
or its readers: BOOK_WORDS) lose their labels: two 1-layer students of the quickstart teacher
learn from the other labelled training reviews, one of them also from the book reviews' texts
as unlabeled data, and all three are scored on the book reviews of the test split.

  .venv/bin/python -m benchmarks.distill_benchmark --suite=domain
"""

import json
import os
import shutil
import statistics
import time
from typing import Dict, List

from absl import app, flags

from benchmarks import report

FLAGS = flags.FLAGS
flags.DEFINE_string("output", str(report.BENCHMARKS_MD),
                    "Markdown file whose section is written ('' to only print).")
flags.DEFINE_integer("batches", 20, "Timed batches of 64 reviews per export.")
flags.DEFINE_integer("single_calls", 200, "Timed calls of one review per export.")
flags.DEFINE_enum("suite", "quickstart", ["quickstart", "base", "domain"], "quickstart: the "
                  "quickstart teacher and a 1-layer student; base: a BERT-base-sized teacher "
                  "of random weights and 3- and 4-layer students, serving speed only; domain: "
                  "1-layer students with and without unlabeled book reviews, on book reviews.")

TITLE = "## Distillation: the quickstart teacher into a 1-layer student"
ROOT = "runs/distill_benchmark"
HUB = [f"--preprocess_handle={ROOT}/hub/preprocess", f"--encoder_handle={ROOT}/hub/encoder"]
TEACHER = ["-m", "bert_tf2.train", "--flagfile=configs/quickstart.flags", *HUB,
           f"--model_dir={ROOT}/teacher/model", f"--export_dir={ROOT}/teacher/export"]
STUDENT = ["-m", "bert_tf2.distill", "--flagfile=configs/quickstart_distill.flags", *HUB,
           f"--teacher={ROOT}/teacher/export", f"--model_dir={ROOT}/student/model",
           f"--export_dir={ROOT}/student/export"]
BATCH = 64
BASE_TITLE = "## Distillation at BERT-base size: serving speed of 3- and 4-layer students"
BASE_ROOT = "runs/distill_benchmark_base"
# BERT-base's sizes (Google's chinese_L-12_H-768_A-12) over the quickstart vocab.
BASE_SIZES = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072)
BASE_HUB = [f"--preprocess_handle={BASE_ROOT}/hub/preprocess",
            f"--encoder_handle={BASE_ROOT}/hub/encoder"]
BASE_RUN = [f"--train_data={BASE_ROOT}/train.jsonl", "--train_steps=1", "--epochs=1"]
BASE_TEACHER = ["-m", "bert_tf2.train", "--flagfile=configs/quickstart.flags", *BASE_HUB,
                f"--bert_config_file={BASE_ROOT}/bert_config.json", "--init_checkpoint=",
                *BASE_RUN, f"--model_dir={BASE_ROOT}/teacher/model",
                f"--export_dir={BASE_ROOT}/teacher/export"]


def base_student(layers: int) -> List[str]:
    return ["-m", "bert_tf2.distill", "--flagfile=configs/quickstart_distill.flags",
            f"--preprocess_handle={BASE_ROOT}/hub/preprocess",
            f"--teacher={BASE_ROOT}/teacher/export", f"--student_num_layers={layers}",
            *BASE_RUN, f"--model_dir={BASE_ROOT}/student{layers}/model",
            f"--export_dir={BASE_ROOT}/student{layers}/export"]


def speed(saved_model: str, reviews: List[str]) -> Dict[str, float]:
    """Reviews/s in batches of BATCH, and the median ms of one review a call."""
    from bert_tf2 import predict  # pylint: disable=g-import-not-at-top
    model = predict.Predictor(saved_model)
    batches = [reviews[i:i + BATCH] for i in range(0, BATCH * FLAGS.batches, BATCH)]
    for batch in batches:  # untimed: traces each padded length once
        model(batch)
    start = time.perf_counter()
    for batch in batches:
        model(batch)
    throughput = BATCH * len(batches) / (time.perf_counter() - start)
    latencies = []
    for review in reviews[:FLAGS.single_calls]:
        model([review])  # untimed first call of each length bucket happens here too
    for review in reviews[:FLAGS.single_calls]:
        start = time.perf_counter()
        model([review])
        latencies.append((time.perf_counter() - start) * 1000)
    return {"throughput": throughput, "p50_ms": statistics.median(latencies)}


def measure(name: str, args: List[str], reviews: List[str]) -> Dict[str, object]:
    directory = report.REPO_ROOT / ROOT / name
    shutil.rmtree(directory, ignore_errors=True)  # a new run, not a resumed one
    directory.mkdir(parents=True)
    row = report.run_measured(args, str(directory / f"{name}.log"))
    metrics = json.loads((directory / "model" / "metrics.json").read_text(encoding="utf-8"))
    return dict(row, test=metrics["test"]["accuracy"], dev=metrics["dev"]["accuracy"],
                **speed(str(directory / "export"), reviews))


def markdown_section(rows: Dict[str, Dict[str, object]]) -> str:
    teacher = rows["teacher (quickstart, 2 layers)"]
    lines = ["| model | test accuracy | dev accuracy | batch-64 reviews/s | one review, p50 | "
             "command wall time | peak memory |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['test']:.1%} | {row['dev']:.1%} | "
                     f"{row['throughput']:,.0f} ({row['throughput'] / teacher['throughput']:.2f}x)"
                     f" | {row['p50_ms']:.2f} ms | {row['wall_s']:.0f} s | "
                     f"{row['peak_mib']:,.0f} MiB |")
    return (f"{TITLE}\n\n`.venv/bin/python -m benchmarks.distill_benchmark` on "
            f"{report.machine_line()}, each command a process of its own, one after the "
            "other. The teacher is the quickstart (configs/quickstart.flags); the student "
            "starts from its embeddings, pooler, head and first layer and learns its "
            "probabilities on the built-in corpus's training texts (configs/"
            "quickstart_distill.flags: temperature 1, hard-label weight 0.5, no unlabeled "
            "data). Speed: each export's `serving_default` signature called in one process, "
            f"{FLAGS.batches} batches of {BATCH} test reviews in the corpus's order after an "
            f"untimed pass, and {FLAGS.single_calls} calls of one review (the median). The "
            "distillation's wall time includes the teacher labelling the training texts.\n\n"
            + "\n".join(lines)
            + "\n\nThe commands, from the repository root:\n\n```sh\n"
            + "\n".join(f".venv/bin/python {' '.join(args)}" for args in (TEACHER, STUDENT))
            + "\n```\n")


def measure_base(name: str, args: List[str], reviews: List[str]) -> Dict[str, object]:
    directory = report.REPO_ROOT / BASE_ROOT / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    row = report.run_measured(args, str(directory / f"{name}.log"))
    return dict(row, **speed(str(directory / "export"), reviews))


def base_section(rows: Dict[str, Dict[str, object]], load: str) -> str:
    teacher = rows["teacher (12 layers)"]
    lines = ["| model | batch-64 reviews/s | one review, p50 | command wall time |",
             "|---|---:|---:|---:|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['throughput']:,.1f} "
                     f"({row['throughput'] / teacher['throughput']:.2f}x) | "
                     f"{row['p50_ms']:.1f} ms ({teacher['p50_ms'] / row['p50_ms']:.2f}x "
                     f"faster) | {row['wall_s']:.0f} s |")
    commands = [BASE_TEACHER, base_student(4), base_student(3)]
    command = report.command("benchmarks.distill_benchmark", FLAGS,
                             ["suite", "batches", "single_calls"])
    return (f"{BASE_TITLE}\n\n`{command}` on {report.machine_line()}. The teacher is a "
            "BERT-base-sized classifier (12 layers, hidden 768, 12 heads, the quickstart "
            "vocab of 4,452 tokens) of random weights, trained one step on 64 reviews; each "
            "student starts from its layers (every 4th for 3 layers, every 3rd for 4) and "
            "takes one distillation step: what is measured is serving speed, not accuracy. "
            "Each export's `serving_default` signature called in this process: "
            f"{FLAGS.batches} batches of {BATCH} test reviews in the corpus's order after an "
            f"untimed pass, and {FLAGS.single_calls} calls of one review (the median). "
            f"Load average (1 min) before/after: {load} (other work shares the cores)."
            "\n\n" + "\n".join(lines)
            + "\n\nThe commands, from the repository root (`benchmarks/distill_benchmark.py` "
            f"writes {BASE_ROOT}/train.jsonl and bert_config.json first):\n\n```sh\n"
            + "\n".join(f".venv/bin/python {' '.join(args)}" for args in commands)
            + "\n```\n")


def main_base(reviews: List[str], train_texts: List[str]) -> None:
    from bert_tf2 import hub_modules  # pylint: disable=g-import-not-at-top
    root = report.REPO_ROOT / BASE_ROOT
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    quickstart = json.loads((report.REPO_ROOT / "configs" / "bert_tiny_zh.json").read_text())
    vocab = str(report.REPO_ROOT / "configs" / "vocab_snownlp.txt")
    (root / "bert_config.json").write_text(json.dumps(dict(
        quickstart, vocab_size=hub_modules.count_vocab(vocab), **BASE_SIZES)))
    (root / "train.jsonl").write_text("".join(
        json.dumps({"text": text, "label": i % 2}, ensure_ascii=False) + "\n"
        for i, text in enumerate(train_texts[:64])), encoding="utf-8")
    load = f"{os.getloadavg()[0]:.1f}"
    rows = {"teacher (12 layers)": measure_base("teacher", BASE_TEACHER, reviews)}
    for layers in (4, 3):
        rows[f"student ({layers} layers)"] = measure_base(f"student{layers}",
                                                          base_student(layers), reviews)
    load += f"/{os.getloadavg()[0]:.1f}"
    report.publish(base_section(rows, load), FLAGS.output, BASE_TITLE)


DOMAIN_TITLE = "## Distillation with unlabeled in-domain text: book reviews"
DOMAIN_ROOT = "runs/distill_benchmark_domain"
BOOK_WORDS = ("本书", "书中", "这书", "作者", "读者", "小说", "读完", "看完这")
HOTEL_WORDS = ("酒店", "房间", "宾馆")
DOMAIN_DATA = [f"--train_data={DOMAIN_ROOT}/train_other.jsonl",
               f"--eval_data={DOMAIN_ROOT}/dev.jsonl",
               f"--test_data={DOMAIN_ROOT}/test_books.jsonl"]


def domain_student(name: str, unlabeled: bool) -> List[str]:
    return ["-m", "bert_tf2.distill", "--flagfile=configs/quickstart_distill.flags", *HUB,
            f"--teacher={ROOT}/teacher/export", *DOMAIN_DATA,
            *([f"--unlabeled_data={DOMAIN_ROOT}/books_unlabeled.jsonl"] if unlabeled else []),
            f"--model_dir={DOMAIN_ROOT}/{name}/model",
            f"--export_dir={DOMAIN_ROOT}/{name}/export"]


def is_book(text: str) -> bool:
    return any(w in text for w in BOOK_WORDS) and not any(w in text for w in HOTEL_WORDS)


def _write_rows(path, examples, keep) -> int:
    rows = [json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n"
            for text, label in zip(examples.texts, examples.labels) if keep(text)]
    path.write_text("".join(rows), encoding="utf-8")
    return len(rows)


def main_domain(splits) -> None:
    from bert_tf2 import predict  # pylint: disable=g-import-not-at-top
    root = report.REPO_ROOT / DOMAIN_ROOT
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    counts = {"other": _write_rows(root / "train_other.jsonl", splits["train"],
                                   lambda t: not is_book(t)),
              "books": _write_rows(root / "books_unlabeled.jsonl", splits["train"], is_book),
              "test": _write_rows(root / "test_books.jsonl", splits["test"], is_book)}
    _write_rows(root / "dev.jsonl", splits["dev"], lambda t: True)
    if not (report.REPO_ROOT / ROOT / "teacher" / "export").is_dir():
        report.run_measured(TEACHER, str(root / "teacher.log"))
    books = [(t, l) for t, l in zip(splits["test"].texts, splits["test"].labels) if is_book(t)]
    teacher_labels = predict.Predictor(str(report.REPO_ROOT / ROOT / "teacher" / "export"))(
        [t for t, _ in books])[1]
    rows = {"teacher (quickstart, 2 layers; trained with the book reviews' labels)": dict(
        test=float(sum(int(p == l) for p, (_, l) in zip(teacher_labels, books)) / len(books)),
        wall_s=None)}
    for name, unlabeled in (("without", False), ("with", True)):
        directory = root / name
        directory.mkdir()
        row = report.run_measured(domain_student(name, unlabeled), str(directory / "log"))
        metrics = json.loads((directory / "model" / "metrics.json").read_text("utf-8"))
        rows[f"student (1 layer), {name} the book reviews as unlabeled text"] = dict(
            row, test=metrics["test"]["accuracy"])
    lines = ["| model | accuracy on the test split's book reviews | command wall time |",
             "|---|---:|---:|"]
    for name, row in rows.items():
        wall = "" if row["wall_s"] is None else f"{row['wall_s']:.0f} s"
        lines.append(f"| {name} | {row['test']:.1%} | {wall} |")
    section = (
        f"{DOMAIN_TITLE}\n\n`.venv/bin/python -m benchmarks.distill_benchmark --suite=domain` "
        f"on {report.machine_line()}. Book reviews: those that hold one of "
        f"{', '.join(BOOK_WORDS)} and none of {', '.join(HOTEL_WORDS)} "
        f"({counts['books']:,} of the training split, {counts['test']} of its test split). "
        f"Both students learn from the other {counts['other']:,} labelled training reviews "
        "(configs/quickstart_distill.flags, the teacher of the section above); one also "
        "from the training split's book reviews without their labels (the teacher labels "
        "them). One run each: a test set of this size has a standard error of about 2 "
        "points.\n\n" + "\n".join(lines)
        + "\n\nThe commands, from the repository root (`benchmarks/distill_benchmark.py` "
        f"writes the files under {DOMAIN_ROOT} first):\n\n```sh\n"
        + "\n".join(f".venv/bin/python {' '.join(domain_student(name, unlabeled))}"
                     for name, unlabeled in (("without", False), ("with", True)))
        + "\n```\n")
    report.publish(section, FLAGS.output, DOMAIN_TITLE)


def main(argv):
    del argv
    from bert_tf2 import data  # pylint: disable=g-import-not-at-top
    splits = data.builtin_corpus_splits()
    reviews = list(splits["test"].texts)
    if FLAGS.suite == "base":
        main_base(reviews, list(splits["train"].texts))
        return
    if FLAGS.suite == "domain":
        main_domain(splits)
        return
    shutil.rmtree(report.REPO_ROOT / ROOT / "hub", ignore_errors=True)
    rows = {"teacher (quickstart, 2 layers)": measure("teacher", TEACHER, reviews),
            "student (1 layer)": measure("student", STUDENT, reviews)}
    report.publish(markdown_section(rows), FLAGS.output, TITLE)


if __name__ == "__main__":
    app.run(main)
