"""Batch prediction on Apache Beam: predict's rows from every file of a pattern, sharded out,
unreadable rows in the dead letter, the hurried user's mistakes refused before the job."""

import bz2
import csv
import glob
import gzip
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import flags
import numpy as np
import pytest

from bert_tf2 import beam_predict, cli, config, io_utils, predict
from tests import task_data
from tests.conftest import REPO_ROOT
from tests.tiny_fixtures import predict_config

TWO_WORKERS = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")


@pytest.fixture(scope="module")
def saved_model(tiny_training_run):
    return tiny_training_run["saved_model"]


@pytest.fixture(scope="module")
def pair_topics_export(tmp_path_factory, tiny_hub_modules, corpus_splits):
    """A multi-class model of sentence pairs: both the pairs and the classes of a handler."""
    root = tmp_path_factory.mktemp("pair_topics")
    return (task_data.pair_topics_export(root, tiny_hub_modules, corpus_splits),
            str(root / "dev.tsv"))


def run_beam(*args: str):
    """`python -m bert_tf2.beam_predict ARGS`, in this process: its flags split as the command
    splits them, Beam's options passed on."""
    flag_values = flags.FlagValues()
    beam_predict.define_flags(flag_values)
    rest = beam_predict.parse_flags(["beam_predict", "--noprogress", *args], flag_values)
    return beam_predict.run(config.PredictConfig.from_flags(flag_values, tensorflow_paths=False),
                            rest[1:])


def shards(prefix) -> list:
    return sorted(glob.glob(f"{prefix}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]"))


def read_jsonl(paths) -> list:
    return [json.loads(line) for path in paths
            for line in open(path, encoding="utf-8").read().splitlines()]


def predict_rows(saved_model, path, *args) -> list:
    stdout = io.StringIO()
    predict.run(predict_config(f"--saved_model={saved_model}", f"--input={path}",
                               "--noprogress", *args), stdout=stdout)
    return [json.loads(line) for line in stdout.getvalue().splitlines()]


def write_reviews(path, texts, *, extra: str = "") -> str:
    """A CSV file 'id,评论' with `texts` (quoted: commas, quotes and newlines are fine)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "评论"])
        writer.writerows(enumerate(texts))
        f.write(extra)
    return str(path)


@pytest.fixture(scope="module")
def two_files(tmp_path_factory, corpus_splits):
    root = tmp_path_factory.mktemp("reviews")
    texts = list(corpus_splits["test"].texts[:90])
    texts[3], texts[50] = "", "第一行\n第二行，有\"引号\""
    return [write_reviews(root / "a.csv", texts[:40]), write_reviews(root / "b.csv", texts[40:])]


def check_same_as_predict(rows, saved_model, files, *predict_args):
    """`rows` are predict's rows of `files`, each once, with the file they came from."""
    expected = {(path, row["line"]): row for path in files
                for row in predict_rows(saved_model, path, *predict_args)}
    got = {(row["file"], row["line"]): row for row in rows}
    assert len(got) == len(rows) == len(expected) and set(got) == set(expected)
    for key, row in got.items():
        want = expected[key]
        assert list(row) == ["file", *want] and row["text"] == want["text"]
        assert row.get("label") == want.get("label") and row.get("labels") == want.get("labels")
        if "probability" in want:
            np.testing.assert_allclose(row["probability"], want["probability"], atol=1e-6)
        for name, probability in want.get("probabilities", {}).items():
            np.testing.assert_allclose(row["probabilities"][name], probability, atol=1e-6)


@pytest.mark.slow  # starts two worker processes
def test_two_workers_over_two_csv_files_give_predicts_rows(saved_model, two_files, tmp_path):
    pattern = os.path.join(os.path.dirname(two_files[0]), "*.csv")
    summary = run_beam(f"--saved_model={saved_model}", f"--input={pattern}",
                       "--text_column=评论", f"--output={tmp_path / 'out' / 'p'}",
                       "--batch_size=8", *TWO_WORKERS)
    rows = read_jsonl(shards(tmp_path / "out" / "p"))
    check_same_as_predict(rows, saved_model, two_files, "--text_column=评论")
    assert summary["rows"] == len(rows) == 90 and summary["bad_rows"] == 0
    assert {row["file"] for row in rows} == set(two_files)
    assert "" in {row["text"] for row in rows}  # an empty text is answered
    (dead_letter,) = shards(tmp_path / "out" / "p.bad-rows")
    assert os.path.getsize(dead_letter) == 0


def bad_files(root):
    """Two files with unreadable rows: a wrong field count, a quote open at the end of the
    file, undecodable bytes, a JSON error."""
    a = write_reviews(root / "a.csv", ["好", "坏"], extra="9,多,一列\n10,还好\n11,\"没有关上\n")
    b = root / "b.jsonl"
    b.write_bytes('{"评论": "好"}\n{"评论": \n{"评论": "ok"}\n'.encode("utf-8")
                  + "差\n".encode("gbk") + '{"评论": "after"}\n'.encode("utf-8"))
    return a, str(b)


def test_bad_rows_go_to_the_dead_letter_with_file_and_line(saved_model, tmp_path, capsys):
    a, b = bad_files(tmp_path)
    c = tmp_path / "c.txt"  # GBK read as UTF-8: not one of its 150 lines is read
    c.write_bytes("".join(f"第{i}条评论\n" for i in range(150)).encode("gbk"))
    prefix = tmp_path / "p"
    summary = run_beam(f"--saved_model={saved_model}", f"--input={tmp_path}/[abc].*",
                       "--text_column=评论", "--skip_bad_rows", f"--output={prefix}")
    letters = sorted(read_jsonl(shards(f"{prefix}.bad-rows")),
                     key=lambda letter: (letter["file"], letter["line"]))
    assert [(letter["file"], letter["line"], letter["lines_not_read"]) for letter in letters] == [
        (a, 4, 0), (a, 6, 0), (b, 2, 0), (b, 4, 2), (str(c), 1, 150)]
    assert "3 fields" in letters[0]["error"] and "unexpected end of data" in letters[1]["error"]
    assert "not a JSON object" in letters[2]["error"]
    assert "not valid UTF-8" in letters[3]["error"] and "rest of the file" in letters[3]["error"]
    assert letters[4]["error"].endswith("the rest of the file was not read (150 lines)")
    rows = read_jsonl(shards(prefix))
    assert sorted((row["file"], row["line"], row["text"]) for row in rows) == [
        (a, 2, "好"), (a, 3, "坏"), (a, 5, "还好"), (b, 1, "好"), (b, 3, "ok")]
    assert (summary["rows"], summary["bad_rows"]) == (5, 5)
    assert (summary["unreadable_files"], summary["lines_not_read"]) == (2, 152)
    assert re.search(r"^beam_predict: 5 rows of 3 files answered into .*; 5 rows in the dead "
                     r"letter .*, 2 of them for 2 files that could not be read to the end: 152 "
                     r"lines not read; [\d.]+ s$", capsys.readouterr().err, re.MULTILINE)


def test_without_skip_bad_rows_the_first_bad_row_fails_the_job(saved_model, tmp_path):
    a, _ = bad_files(tmp_path)
    with pytest.raises(cli.UserError, match=r"a\.csv:4: 3 fields .*--skip_bad_rows"):
        run_beam(f"--saved_model={saved_model}", f"--input={tmp_path}/a.csv",
                 "--text_column=评论", f"--output={tmp_path / 'p'}")
    assert not shards(tmp_path / "p")
    assert not glob.glob(str(tmp_path / "beam-temp-*"))  # the failed job's scratch is gone


def test_compressed_files_and_a_headerless_txt_are_read_as_predict_reads_them(saved_model,
                                                                               tmp_path):
    texts = ["好吃，很好", "", "第一行\n第二行", "太慢了"]
    plain = tmp_path / "plain"
    plain.mkdir()
    write_reviews(plain / "a.csv", texts)
    (plain / "b.txt").write_text("\n".join(texts[::-1]) + "\n", encoding="utf-8")
    (plain / "c.jsonl").write_text("".join(json.dumps({"评论": t}, ensure_ascii=False) + "\n"
                                           for t in texts), encoding="utf-8")
    # Another job's shard of data (not this tool's output) is read too.
    shutil.copy(plain / "b.txt", plain / "texts-00000-of-00001")
    packed = tmp_path / "packed"
    packed.mkdir()
    files = [str(packed / "a.csv.gz"), str(packed / "b.txt.gz"), str(packed / "c.jsonl.bz2"),
             str(packed / "texts-00000-of-00001")]
    for name, compress in (("a.csv", gzip.compress), ("b.txt", gzip.compress),
                           ("c.jsonl", bz2.compress), ("texts-00000-of-00001", None)):
        content = (plain / name).read_bytes()
        target = next(path for path in files if os.path.basename(path).startswith(name))
        with open(target, "wb") as f:
            f.write(compress(content) if compress else content)
    run_beam(f"--saved_model={saved_model}", f"--input={packed}/*", "--text_column=评论",
             f"--output={tmp_path / 'out' / 'p'}")
    rows = read_jsonl(shards(tmp_path / "out" / "p"))
    expected = [dict(row, file=packed_path) for path, packed_path in zip(
        sorted(glob.glob(f"{plain}/*")), sorted(files))
        for row in read_rows_of(saved_model, path)]
    assert sorted(map(json.dumps, rows)) == sorted(map(json.dumps, expected))
    assert len(rows) == 18  # 4 CSV rows, 4 JSONL rows, and the 5 lines of each plain text
    # A headerless .txt with --column_names: its text column, as train reads it.
    news = tmp_path / "news.txt"
    news.write_text("好吃\t1\n难吃\t0\n", encoding="utf-8")
    run_beam(f"--saved_model={saved_model}", f"--input={news}", "--column_names=text,label",
             f"--output={tmp_path / 'news'}")
    assert sorted(row["text"] for row in read_jsonl(shards(tmp_path / "news"))) == [
        "好吃", "难吃"]


def read_rows_of(saved_model, path) -> list:
    """predict's rows of one of the files above, with "file" first."""
    args = () if path.endswith((".txt", "-of-00001")) else ("--text_column=评论",)
    return [{"file": path, **row} for row in predict_rows(saved_model, path, *args)]


def test_its_own_output_is_never_its_input(saved_model, two_files, tmp_path):
    reviews = tmp_path / "reviews"
    reviews.mkdir()
    shutil.copy(two_files[0], reviews / "a.csv")
    args = (f"--saved_model={saved_model}", "--text_column=评论")
    with pytest.raises(cli.UserError, match=rf"^--output={re.escape(str(reviews))}/p: --input="
                       rf".*/\* matches its shards \(.*/p-00000-of-00001\), so a later run over "
                       "--input would score this run's output as texts"):
        run_beam(*args, f"--input={reviews}/*", f"--output={reviews}/p")
    with pytest.raises(cli.UserError, match=r"matches its shards \(.*/p\.bad-rows-00000-of-"):
        run_beam(*args, f"--input={reviews}/*.*", f"--output={reviews}/p")
    run_beam(*args, f"--input={reviews}/*.csv", f"--output={reviews}/p", "--format=csv")
    assert len(shards(reviews / "p")) == 1
    # The next run over everything in the folder would score those shards: refused.
    with pytest.raises(cli.UserError, match=r"matches .*/p(\.bad-rows)?-00000-of-00001, an "
                       "output shard or dead letter of beam_predict, whose rows would be scored"):
        run_beam(*args, f"--input={reviews}/*", f"--output={tmp_path}/q")
    assert not shards(tmp_path / "q")


@pytest.mark.slow  # trains a model of pairs
def test_a_multiclass_pairs_export_runs_through_the_handler(pair_topics_export, tmp_path):
    export, dev = pair_topics_export
    args = ("--text_column=q1", "--text_b_column=q2", "--top_k=2")
    run_beam(f"--saved_model={export}", f"--input={dev}", *args, f"--output={tmp_path / 'p'}")
    rows = read_jsonl(shards(tmp_path / "p"))
    check_same_as_predict(rows, export, [dev], *args)
    assert len(rows) == 32 and all(len(row["probabilities"]) == 2 for row in rows)
    with pytest.raises(cli.UserError, match="classifies pairs of texts: pass --text_b_column"):
        run_beam(f"--saved_model={export}", f"--input={dev}", "--text_column=q1",
                 f"--output={tmp_path / 'q'}")
    with pytest.raises(cli.UserError, match="plain text holds one text a line"):
        run_beam(f"--saved_model={export}", f"--input={dev}", *args, "--input_format=text",
                 f"--output={tmp_path / 'q'}")


def test_csv_output_has_a_header_in_every_shard(saved_model, two_files, tmp_path):
    run_beam(f"--saved_model={saved_model}", f"--input={two_files[0]}", "--text_column=评论",
             f"--output={tmp_path / 'p'}", "--format=csv")
    rows = [row for path in shards(tmp_path / "p")
            for row in csv.DictReader(open(path, encoding="utf-8", newline=""))]
    assert len(rows) == 40 and list(rows[0]) == ["file", "line", "text", "probability", "label"]
    assert {row["file"] for row in rows} == {two_files[0]}


@pytest.mark.parametrize("args, message", [
    (("--input={tmp}/nothing*.csv",), r"--input=.*nothing\*\.csv: no file matches"),
    (("--input=-",), "does not read stdin"),
    (("--input={tmp}",), "is a directory: pass a pattern of the files in it"),
    (("--input={a}", "--output=-"), "pass a prefix for the output files"),
    (("--input={a}", "--output={tmp}"), "is a directory"),
    (("--input={a}", "--text_colum=评论"), "--text_colum=评论: neither a beam_predict flag"),
    (("--input={a}", "--text_column=review"), r"a\.csv:2: no column 'review'"),
    (("--input={a}", "--text_column=评论", "--text_b_column=id"),
     "classifies single texts: leave --text_b_column unset"),
    (("--input={tmp}/*", "--output={tmp}/p"),
     r"matches .*/p-00000-of-00001, an output shard or dead letter of beam_predict"),
    (("--input={a}", "--output={tmp}/p"), r"1 shards of it exist .*pass --overwrite"),
    (("--input={a}", "--output=gs:/bucket/p"),
     "--output=gs:/bucket/p looks like a gs:// URL with a slash missing; write gs://bucket/p"),
    (("--input=foo://bucket/*.csv",), r"--input=foo://bucket/\*\.csv: Beam has no file system "
                                      "for foo://"),
    (("--input={a}", "--runner=DataflowRunner", "--project=p"),
     "--input=.*a.csv is a local path, which Dataflow's workers cannot read or write: pass a "
     "gs:// one"),
])
def test_hurried_mistakes_are_refused_before_the_job(saved_model, two_files, tmp_path, args,
                                                     message):
    (tmp_path / "p-00000-of-00001").write_text("")
    args = [arg.format(tmp=tmp_path, a=two_files[0]) for arg in args]
    output = [] if any(arg.startswith("--output") for arg in args) else [f"--output={tmp_path}/q"]
    with pytest.raises(cli.UserError, match=message):
        run_beam(f"--saved_model={saved_model}", *args, *output)


def test_existing_shards_are_kept_unless_overwrite(saved_model, two_files, tmp_path):
    stale = [tmp_path / f"p-0000{i}-of-00003" for i in range(3)]
    for path in stale:
        path.write_text('{"stale": true}\n')
    args = (f"--saved_model={saved_model}", f"--input={two_files[0]}", "--text_column=评论",
            f"--output={tmp_path / 'p'}")
    with pytest.raises(cli.UserError, match=r"3 shards of it exist.*--overwrite"):
        run_beam(*args)
    run_beam(*args, "--overwrite")
    rows = read_jsonl(shards(tmp_path / "p"))
    assert len(rows) == 40 and not any("stale" in row for row in rows)


def test_a_missing_or_broken_export_fails_before_the_job(two_files, tmp_path):
    args = (f"--input={two_files[0]}", "--text_column=评论", f"--output={tmp_path / 'p'}")
    with pytest.raises(cli.UserError, match="no saved_model.pb there"):
        run_beam(f"--saved_model={tmp_path / 'missing'}", *args)
    # With worker processes the launcher checks the export in a child process: the same line.
    with pytest.raises(cli.UserError, match="no saved_model.pb there"):
        run_beam(f"--saved_model={tmp_path / 'missing'}", *args, *TWO_WORKERS)
    broken = tmp_path / "broken"
    (broken / "variables").mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    (broken / "variables" / "variables.index").write_bytes(b"")
    with pytest.raises(cli.UserError, match=r"--saved_model=.*broken: cannot be loaded"):
        run_beam(f"--saved_model={broken}", *args)


@pytest.mark.slow  # starts the command and its workers
def test_the_command_runs_offline_on_two_processes_and_fails_in_one_line(saved_model, tmp_path):
    a, _ = bad_files(tmp_path)
    command = [sys.executable, "-m", "bert_tf2.beam_predict", f"--saved_model={saved_model}",
               f"--input={a}", "--text_column=评论", f"--output={tmp_path / 'p'}"]
    # Any download (Prism's binary, say) would fail through this proxy; Prism's cache would be
    # under this HOME.
    home = tmp_path / "home"
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "HOME": str(home)}
    done = subprocess.run(command + ["--skip_bad_rows", *TWO_WORKERS], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1].startswith("beam_predict: 3 rows of 1 files answered")
    assert "2 rows in the dead letter" in done.stderr and "prism" not in done.stderr.lower()
    assert not (home / ".apache_beam").exists()
    failed = subprocess.run(command + ["--overwrite"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1].startswith(f"beam_predict: {a}:4: 3 fields")
    # In this process (no worker processes), importing Beam without its gcp extra is quiet.
    assert "GCSFileSystem" not in failed.stderr and "apitools" not in failed.stderr
    assert "Traceback" not in failed.stderr  # the user's mistake is told once, in one line


def test_the_default_runner_is_the_fn_api_runner_and_flags_pass_through():
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
    from apache_beam.runners import runner
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    options = beam_predict.pipeline_options(TWO_WORKERS)
    assert isinstance(runner.create_runner(options.view_as(StandardOptions).runner),
                      fn_runner.FnApiRunner)  # not DirectRunner, which may try Prism first
    assert options.view_as(DirectOptions).direct_num_workers == 2
    chosen = beam_predict.pipeline_options(["--runner=DataflowRunner", "--project=p"])
    assert chosen.view_as(StandardOptions).runner == "DataflowRunner"



# ---------------------------------------------------------------------------------------------
# gs:// through a local GCS API server
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gcs_emulator():
    """The URL of a GCS API server, in memory, in its own process on a free loopback port
    (gcp-storage-emulator); skipped where it, or Beam's gs:// (google-cloud-storage, which
    apache-beam[gcp] brings), is not installed."""
    pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator is not installed "
                        "(requirements-test.txt)")
    pytest.importorskip("google.cloud.storage", reason="Beam's gs:// needs apache-beam[gcp] "
                        "(pip install '.[gcp]')")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start",
                               "--host=127.0.0.1", f"--port={port}", "--in-memory", "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"the GCS emulator did not start: {server.communicate()[1]}")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.communicate(timeout=30)


@pytest.fixture
def bucket(gcs_emulator, monkeypatch):
    """A new bucket on the emulator, which Beam's GCS client (and the test's) reaches through
    STORAGE_EMULATOR_HOST. TensorFlow's file systems are not used by anything under test."""
    from apache_beam.internal.gcp import auth
    from google.cloud import storage
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    # No Google credentials here: Beam's client connects anonymously, which the emulator takes
    # (Beam would first retry finding credentials for about 30 s, then do the same).
    monkeypatch.setattr(auth, "get_service_credentials", lambda options: None)

    def no_tensorflow_file_system():
        raise AssertionError("TensorFlow's file systems used for a URL")

    monkeypatch.setattr(io_utils, "_gfile", no_tensorflow_file_system)
    return storage.Client(project="test").create_bucket(f"bert-tf2-{uuid.uuid4().hex[:12]}")


def upload(bucket, local, name) -> str:
    """Uploads the file, or every file under the directory, `local` as `name`; its gs:// URL."""
    paths = ([local] if os.path.isfile(local) else
             [os.path.join(root, f) for root, _, files in os.walk(local) for f in files])
    for path in paths:
        relative = os.path.relpath(path, local).replace(os.sep, "/")
        bucket.blob(name if relative == "." else f"{name}/{relative}").upload_from_filename(path)
    return f"gs://{bucket.name}/{name}"


def blob_lines(bucket, prefix) -> list:
    return [json.loads(line) for blob in bucket.list_blobs(prefix=prefix)
            for line in blob.download_as_text().splitlines()]


@pytest.mark.slow  # starts a GCS API server
def test_input_glob_output_dead_letter_and_export_on_gs(bucket, saved_model, two_files, tmp_path,
                                                        monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    temp_before = set(os.listdir(tempfile.gettempdir()))
    bad, _ = bad_files(tmp_path)
    local = {upload(bucket, two_files[0], "in/reviews.csv"): two_files[0],
             upload(bucket, bad, "in/bad.csv"): bad}
    export = upload(bucket, saved_model, "export/1").rsplit("/", 1)[0]
    bucket.blob("export/2/variables/variables.index").upload_from_string(b"")  # half-copied
    url = f"gs://{bucket.name}"
    args = (f"--saved_model={export}", f"--input={url}/in/*", "--text_column=评论",
            "--skip_bad_rows", "--batch_size=8")

    summary = run_beam(*args, f"--output={url}/out/pred")
    rows = blob_lines(bucket, "out/pred-")
    check_same_as_predict([dict(row, file=local[row["file"]]) for row in rows], saved_model,
                          sorted(local.values()), "--text_column=评论", "--skip_bad_rows")
    assert summary["rows"] == len(rows) == 40 + 3 and summary["bad_rows"] == 2
    letters = blob_lines(bucket, "out/pred.bad-rows-")
    assert sorted((letter["file"], letter["line"]) for letter in letters) == [
        (f"{url}/in/bad.csv", 4), (f"{url}/in/bad.csv", 6)]
    assert sorted(blob.name for blob in bucket.list_blobs(prefix="out/")) == [
        "out/pred-00000-of-00001", "out/pred.bad-rows-00000-of-00001"]  # no beam-temp-* left

    with pytest.raises(cli.UserError, match=r"2 shards of it exist .*pass --overwrite"):
        run_beam(*args, f"--output={url}/out/pred")
    with pytest.raises(cli.UserError, match=rf"--output={url}/out is a directory"):
        run_beam(*args, f"--output={url}/out")
    with pytest.raises(cli.UserError, match=rf"--input={url}/in is a directory: pass a pattern"):
        run_beam(*args[:1], f"--input={url}/in", *args[2:], f"--output={url}/other/pred")
    with pytest.raises(cli.UserError, match=rf"--saved_model={url}/in: no saved_model.pb"):
        run_beam(f"--saved_model={url}/in", *args[1:], f"--output={url}/other/pred")

    # What a worker process does: stage the export from gs:// and load it.
    handler = beam_predict.SavedModelHandler(export, batch_size=8)
    model = handler.load_model()
    assert model.path == f"{export}/1"
    some = sorted(rows, key=lambda row: (row["file"], row["line"]))[:10]
    (answers,) = handler.run_inference(
        [[beam_predict.Row(row["file"], row["line"], row["text"]) for row in some]], model)
    assert [answer["label"] for answer in answers] == [row["label"] for row in some]
    np.testing.assert_allclose([answer["probability"] for answer in answers],
                               [row["probability"] for row in some], atol=1e-6)
    assert os.listdir(tmp_path / "cwd") == []  # nothing on the local disk ...
    assert not [name for name in set(os.listdir(tempfile.gettempdir())) - temp_before
                if name.startswith("bert_tf2-")]  # ... the staged export included
