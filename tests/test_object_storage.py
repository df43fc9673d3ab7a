"""Object storage: the file layer (`bert_tf2.io_utils`) on local paths and on `ram://`,
TensorFlow's in-memory file system (one process), which stands in for `gs://` here; a run whose
model_dir and export_dir are on it; schemes without a file system and unreachable stores
refused in one line before anything is written.
"""

import contextlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import uuid
from typing import Iterator

import bert_tf2  # noqa: F401
import pytest
import tensorflow as tf

from bert_tf2 import (cli, crash_safety, distill, evaluate, export, export_lite,
                      io_utils, lite, predict, train)
from tests.conftest import REPO_ROOT
from tests.tiny_fixtures import (TINY_SEQ_LENGTH, Crash, CrashAtStep, distill_config,
                                 evaluate_config, lite_export_config, predict_config,
                                 tiny_train_args, train_config, write_jsonl)


@pytest.fixture(params=["local", "ram"])
def root(request, tmp_path) -> str:
    """A fresh directory: local, or on ram:// (a new name each test: ram:// lives as long as
    the process)."""
    if request.param == "local":
        return str(tmp_path / "store")
    return f"ram://{uuid.uuid4().hex}/store"


def _ram_named_entries(directory) -> list:
    """Entries of `directory` that a URL taken for a local path would have made."""
    return [name for name in os.listdir(directory) if name.endswith(":")]


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------

def test_open_reads_and_writes_as_builtin_open_does(root):
    path = io_utils.join(root, "sub", "reviews.txt")
    with io_utils.open(path, "w", encoding="gbk") as f:
        f.write("房间很干净\r\n第二行\n")
    with io_utils.open(path, encoding="gbk", newline="") as f:
        assert f.read() == "房间很干净\r\n第二行\n"
    with io_utils.open(path, encoding="gbk") as f:
        assert list(f) == ["房间很干净\n", "第二行\n"]
    with io_utils.open(path, "rb") as f:
        assert f.read() == "房间很干净\r\n第二行\n".encode("gbk")
    with io_utils.open(path, "a", encoding="gbk") as f:
        f.write("第三行\n")
    with io_utils.open(path, encoding="gbk") as f:
        assert f.read().splitlines()[-1] == "第三行"
    with pytest.raises(FileNotFoundError):
        io_utils.open(io_utils.join(root, "missing.txt"))
    with pytest.raises(FileExistsError):
        io_utils.open(path, "x")


def test_directory_operations(root):
    for name in ("a.json", "b.json", "c.txt"):
        with io_utils.open(io_utils.join(root, name), "w") as f:
            f.write(name)
    assert io_utils.isdir(root) and not io_utils.isfile(root)
    assert io_utils.isfile(io_utils.join(root, "a.json"))
    assert sorted(io_utils.listdir(root)) == ["a.json", "b.json", "c.txt"]
    assert io_utils.glob(io_utils.join(root, "*.json")) == [
        io_utils.join(root, "a.json"), io_utils.join(root, "b.json")]
    io_utils.copy(io_utils.join(root, "a.json"), io_utils.join(root, "d", "copy.json"))
    with pytest.raises(FileExistsError):
        io_utils.copy(io_utils.join(root, "b.json"), io_utils.join(root, "d", "copy.json"))
    io_utils.rename(io_utils.join(root, "c.txt"), io_utils.join(root, "a.json"),
                    overwrite=True)
    with io_utils.open(io_utils.join(root, "a.json")) as f:
        assert f.read() == "c.txt"
    io_utils.remove(io_utils.join(root, "b.json"))
    assert not io_utils.exists(io_utils.join(root, "b.json"))
    io_utils.rmtree(root)
    assert not io_utils.exists(io_utils.join(root, "a.json"))
    io_utils.rmtree(root, ignore_errors=True)  # gone already: no error


def test_write_json_and_read_json(root):
    path = io_utils.join(root, "run", "metrics.json")
    assert io_utils.read_json(path) is None
    io_utils.write_json({"dev": {"accuracy": 0.5}, "标签": "正面"}, path)
    io_utils.write_json({"dev": {"accuracy": 0.75}, "标签": "正面"}, path)
    assert io_utils.read_json(path) == {"dev": {"accuracy": 0.75}, "标签": "正面"}
    assert io_utils.listdir(io_utils.join(root, "run")) == ["metrics.json"]


def test_atomic_file_leaves_the_old_file_when_its_block_fails(root):
    path = io_utils.join(root, "classes.txt")
    with io_utils.atomic_file(path) as f:
        f.write("负面\n正面\n")
    with pytest.raises(RuntimeError):
        with io_utils.atomic_file(path) as f:
            f.write("half")
            raise RuntimeError("killed")
    with io_utils.open(path, encoding="utf-8") as f:
        assert f.read() == "负面\n正面\n"
    assert io_utils.listdir(root) == ["classes.txt"]  # no scratch sibling left


def _finished_export(directory: pathlib.Path) -> str:
    """A stand-in for an export's scratch directory: saved_model.pb, variables, assets."""
    (directory / "variables").mkdir(parents=True)
    (directory / "assets").mkdir()
    (directory / "saved_model.pb").write_bytes(b"graph")
    (directory / "variables" / "variables.index").write_bytes(b"index")
    (directory / "variables" / "variables.data-00000-of-00001").write_bytes(b"data")
    (directory / "assets" / "vocab.txt").write_text("[PAD]\n", encoding="utf-8")
    return str(directory)


def test_publish_next_version_numbers_versions_and_never_overwrites(root, tmp_path):
    export_dir = io_utils.join(root, "export")
    for expected in (1, 2):
        with io_utils.scratch_directory(export_dir, "export") as scratch:
            _finished_export(pathlib.Path(scratch))
            final = io_utils.publish_next_version(scratch, export_dir)
        assert final == io_utils.join(export_dir, str(expected))
    assert io_utils.existing_versions(export_dir) == [1, 2]
    with io_utils.open(io_utils.join(export_dir, "2", "variables", "variables.index"),
                       "rb") as f:
        assert f.read() == b"index"
    with pytest.raises(FileExistsError):
        io_utils.publish_directory(_finished_export(tmp_path / "again"),
                                   io_utils.join(export_dir, "2"))
    assert sorted(io_utils.listdir(export_dir)) == ["1", "2"]  # no scratch left behind


def test_a_version_on_a_store_gets_its_saved_model_pb_last(tmp_path, monkeypatch):
    """Copied file by file, a version has no saved_model.pb until all else is there: a loader
    polling the store cannot load a part of it."""
    export_dir = f"ram://{uuid.uuid4().hex}/export"
    copied = []
    real_copy = io_utils.copy

    def recording_copy(source, destination, **kwargs):
        copied.append(destination[len(export_dir) + 1:])
        real_copy(source, destination, **kwargs)

    monkeypatch.setattr(io_utils, "copy", recording_copy)
    io_utils.publish_next_version(_finished_export(tmp_path / "scratch"), export_dir)
    assert copied[-1] == "1/saved_model.pb"
    assert sorted(copied) == ["1/assets/vocab.txt", "1/saved_model.pb",
                              "1/variables/variables.data-00000-of-00001",
                              "1/variables/variables.index"]


def test_a_copy_that_fails_leaves_no_version(tmp_path, monkeypatch):
    export_dir = f"ram://{uuid.uuid4().hex}/export"
    io_utils.makedirs(export_dir)
    real_copy = io_utils.copy

    def failing_copy(source, destination, **kwargs):
        if destination.endswith("variables.index"):
            raise OSError(5, "connection reset", destination)
        real_copy(source, destination, **kwargs)

    monkeypatch.setattr(io_utils, "copy", failing_copy)
    with pytest.raises(OSError, match="connection reset"):
        io_utils.publish_next_version(_finished_export(tmp_path / "scratch"), export_dir)
    assert io_utils.existing_versions(export_dir) == []


def test_pruning_on_a_store_removes_saved_model_pb_first(tmp_path, monkeypatch):
    export_dir = f"ram://{uuid.uuid4().hex}/export"
    for n in range(3):
        io_utils.publish_next_version(_finished_export(tmp_path / str(n)), export_dir)
    removed = []
    real_remove = io_utils.remove
    monkeypatch.setattr(io_utils, "remove",
                        lambda path: (removed.append(path), real_remove(path)))
    assert export.prune_versions(export_dir, keep=1) == [1, 2]
    assert removed[0] == io_utils.join(export_dir, "1", "saved_model.pb")
    assert io_utils.existing_versions(export_dir) == [3]


# ---------------------------------------------------------------------------------------------
# Refused before anything is written
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["s3://bucket/model", "hdfs://namenode/model",
                                 "az://account/model", "foo://bucket/model"])
def test_a_scheme_without_a_file_system_is_refused_in_one_line(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(io_utils.NoFileSystemError) as refused:
        io_utils.check_writable_dir(url, "--model_dir")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"--model_dir={url}: TensorFlow {tf.__version__} has no file "
                              f"system for {url.split(':')[0]}://")
    if not url.startswith("foo"):
        assert "tensorflow-io" in message
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("path", ["gs:/bucket/model", "s3:bucket/model"])
def test_a_url_missing_a_slash_is_refused_not_made_a_local_folder(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(io_utils.OutputError, match="with a slash missing; write "):
        io_utils.check_writable_dir(path, "--export_dir")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("make_config, args, flag", [
    (train_config, ["--model_dir=m", "--export_dir=gs:/b/export"], "--export_dir"),
    (train_config, ["--model_dir=m", "--train_data=gs:/b/train.csv"], "--train_data"),
    (train_config, ["--model_dir=m", "--encoder_handle=gs:/b/hub/encoder"], "--encoder_handle"),
    (distill_config, ["--model_dir=m", "--teacher=gs:/b/export"], "--teacher"),
    (distill_config, ["--model_dir=m", "--teacher=e", "--unlabeled_data=a.txt, s3:b/u.txt"],
     "--unlabeled_data"),
    (distill_config, ["--model_dir=m", "--teacher=e", "--student_encoder=gs:/b/encoder"],
     "--student_encoder"),
    (evaluate_config, ["--saved_model=gs:/b/export"], "--saved_model"),
    (evaluate_config, ["--saved_model=e", "--output_dir=gs:/b/eval"], "--output_dir"),
    (evaluate_config, ["--history=gs:/b/model/history.csv"], "--history"),
    (predict_config, ["--saved_model=e", "--input=in.txt", "--output=gs:/b/out.jsonl"],
     "--output"),
    (lite_export_config, ["--saved_model=e", "--output=gs:/b/model.tflite"], "--output"),
])
def test_every_command_refuses_a_path_flag_missing_a_slash_when_parsed(make_config, args,
                                                                        flag):
    with pytest.raises(io_utils.OutputError,
                       match=rf"^{flag}=\S+ looks like a (gs|s3):// URL with a slash missing"):
        make_config(*args)


def test_every_command_refuses_a_scheme_without_a_file_system_when_parsed(tmp_path,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(io_utils.NoFileSystemError, match=r"^--run_config=s3://b/run_config"):
        train_config("--run_config=s3://b/run_config.json")
    with pytest.raises(io_utils.NoFileSystemError, match=r"^--output_dir=s3://b/eval: "):
        evaluate_config("--saved_model=e", "--output_dir=s3://b/eval")
    with pytest.raises(io_utils.NoFileSystemError, match=r"^--saved_model=hdfs://n/e: "):
        lite_export_config("--saved_model=hdfs://n/e", "--output=m.tflite")
    handle = "https://tfhub.dev/tensorflow/bert_zh_preprocess/3"  # TF Hub's: not probed
    assert train_config("--model_dir=m", f"--preprocess_handle={handle}"
                        ).modules.preprocess_handle == handle
    assert os.listdir(tmp_path) == []
    store = f"ram://{uuid.uuid4().hex}/export"  # a store that answers: taken
    assert evaluate_config(f"--saved_model={store}").saved_model == store


def test_same_path_and_is_inside_compare_urls_by_their_resolved_spelling(tmp_path):
    assert io_utils.same_path("gs://b/export/", "GS://b/x/../export")
    assert not io_utils.same_path("gs://b/export", "gs://b/export2")
    assert not io_utils.same_path("gs://b/export", str(tmp_path / "gs:" / "b" / "export"))
    (tmp_path / "e").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "e")
    assert io_utils.same_path(str(tmp_path / "link"), str(tmp_path / "e") + "/")
    assert io_utils.is_inside(str(tmp_path / "link" / "eval"), str(tmp_path / "e"))


def test_getsize_on_either(root):
    path = io_utils.join(root, "model.tflite")
    with io_utils.open(path, "wb") as f:
        f.write(b"x" * 1234)
    assert io_utils.getsize(path) == 1234
    with pytest.raises(FileNotFoundError):
        io_utils.getsize(io_utils.join(root, "missing.tflite"))


def test_an_unreachable_store_is_one_line_naming_the_url(tmp_path, monkeypatch):
    """No network here (and no credentials): TensorFlow's GCS client fails, or retries until
    the probe gives up; either way one line that names the URL."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(io_utils, "STORE_PROBE_SECONDS", 20.0)
    url = f"gs://bert-tf2-unreachable-{uuid.uuid4().hex[:8]}/model"
    with pytest.raises(io_utils.UnreachableStoreError) as refused:
        io_utils.check_writable_dir(url, "--model_dir")
    assert str(refused.value).startswith(f"--model_dir={url}: ")
    assert "\n" not in str(refused.value)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Training on a store
# ---------------------------------------------------------------------------------------------

def _args(modules, model_dir, export_dir, train_data, *extra):
    return [f"--preprocess_handle={modules.preprocess}", f"--encoder_handle={modules.encoder}",
            f"--model_dir={model_dir}", f"--export_dir={export_dir}",
            f"--train_data={train_data}", f"--seq_length={TINY_SEQ_LENGTH}",
            "--batch_size=16", "--learning_rate=1e-3", *extra]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, corpus_splits) -> str:
    """160 examples: 10 steps an epoch at --batch_size=16."""
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl",
                       corpus_splits["train"], 160)


@contextlib.contextmanager
def _local_disk_watched(cwd: pathlib.Path, temp: pathlib.Path) -> Iterator[None]:
    """Runs the block in the empty directory `cwd` with Python's temporary files in the empty
    directory `temp`, and asserts that both are empty after it: nothing was written to the
    local disk but staging that was removed."""
    cwd.mkdir(exist_ok=True)
    temp.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setattr(tempfile, "tempdir", str(temp))
        yield
    assert os.listdir(cwd) == []  # nothing in the working directory (no `ram:` folder)
    # The local staging removed. AutoGraph keeps the source of each function it converts in a
    # temporary file (TensorFlow's, for its tracebacks): not this project's output.
    assert [name for name in os.listdir(temp)
            if not name.startswith("__autograph_generated_file")] == []


@pytest.fixture(scope="module")
def ram_run(tmp_path_factory, tiny_hub_modules, train_file):
    """A run whose data, model_dir and export_dir are on ram://, interrupted at step 11 (what was on
    the store then: "interrupted") and run again, which resumes it; the local disk watched."""
    store = f"ram://{uuid.uuid4().hex}"
    model_dir, export_dir = f"{store}/model", f"{store}/export"
    train_data = f"{store}/data/train.jsonl"
    io_utils.copy(train_file, train_data)
    config = train_config(*_args(tiny_hub_modules, model_dir, export_dir, train_data,
                                 "--train_steps=15", "--checkpoint_steps=4", "--epochs=2"))
    local = tmp_path_factory.mktemp("ram_run")
    with _local_disk_watched(local / "cwd", local / "temp"):
        with pytest.raises(Crash):
            train.run(config, callbacks=[CrashAtStep(11)])
        interrupted = {"backed_up_step": crash_safety.backed_up_step(f"{model_dir}/backup"),
                       "versions": io_utils.existing_versions(export_dir)}
        result = train.run(config)
    return {"store": store, "model_dir": model_dir, "export_dir": export_dir,
            "config": config, "interrupted": interrupted, "result": result}


REVIEWS = ["房间很干净，服务很周到。", "房间又小又脏。"]


def _served_probabilities(saved_model: str, texts) -> list:
    served = tf.saved_model.load(saved_model)
    outputs = served.signatures[export.SERVING_SIGNATURE](**{export.TEXT_INPUT:
                                                             tf.constant(texts)})
    return outputs[export.PROBABILITY_OUTPUT].numpy().ravel().tolist()


@pytest.mark.slow
def test_a_run_on_ram_is_interrupted_resumed_and_exported_there(ram_run, tmp_path):
    model_dir, export_dir, result = ram_run["model_dir"], ram_run["export_dir"], ram_run["result"]
    assert ram_run["interrupted"] == {"backed_up_step": 10, "versions": []}
    assert result.backed_up_steps == (12,)
    assert result.optimizer_steps == 15
    assert result.export_path == f"{export_dir}/1"
    assert io_utils.existing_versions(export_dir) == [1]
    for name in ("run_config.json", "run_data.json", "classes.txt", "history.csv",
                 "metrics.json", "training_curves.png", "checkpoints/final.index"):
        assert io_utils.isfile(f"{model_dir}/{name}"), name
    assert not io_utils.exists(f"{model_dir}/backup")  # removed once the run is exported
    assert io_utils.read_json(f"{model_dir}/run_config.json") == ram_run["config"].to_dict()
    with io_utils.open(f"{model_dir}/history.csv") as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["0", "1"]

    with _local_disk_watched(tmp_path / "cwd", tmp_path / "temp"):
        served = _served_probabilities(result.export_path, REVIEWS)
    expected = result.text_classifier(tf.constant(REVIEWS)).numpy()[:, -1]
    assert served == pytest.approx(expected, abs=1e-5)
    assert export.read_class_names(result.export_path) == result.class_names


@pytest.mark.slow
def test_export_lite_writes_a_tflite_file_to_a_store_from_an_export_there(ram_run, tmp_path):
    result = ram_run["result"]
    output = f"{ram_run['store']}/lite/model.tflite"
    with _local_disk_watched(tmp_path / "cwd", tmp_path / "temp"):
        export_lite.export_lite(result.export_path, output, "none")
        probabilities = lite.LiteClassifier(output).predict(REVIEWS)["probability"]
        predicted = predict.load_predictor(output)(REVIEWS)[0]  # predict/evaluate's way in
        with io_utils.open(output, "rb") as f:
            metadata = lite.read_metadata(f.read())
        served = _served_probabilities(result.export_path, REVIEWS)
        with pytest.raises(io_utils.OutputError, match="already exists; pass --overwrite"):
            io_utils.check_writable_file(output, "--output", overwrite=False)
    assert probabilities.ravel().tolist() == pytest.approx(served, abs=1e-4)
    assert predicted.ravel().tolist() == probabilities.ravel().tolist()
    assert metadata["class_names"] == list(result.class_names)
    assert io_utils.listdir(f"{ram_run['store']}/lite") == ["model.tflite"]  # no scratch left


@pytest.mark.slow
def test_evaluate_writes_its_report_and_plots_to_a_store(tiny_training_run, tmp_path):
    store = f"ram://{uuid.uuid4().hex}"
    history = f"{store}/model/history.csv"
    io_utils.copy(f"{tiny_training_run['model_dir']}/history.csv", history)
    output_dir = f"{store}/eval"
    test_data = io_utils.join(io_utils.dirname(tiny_training_run["model_dir"]), "test.jsonl")
    with _local_disk_watched(tmp_path / "cwd", tmp_path / "temp"):
        report = evaluate.run(evaluate_config(f"--saved_model={tiny_training_run['saved_model']}",
                                              f"--data={test_data}",
                                              f"--output_dir={output_dir}",
                                              f"--history={history}"))
        curves_only = evaluate.run(evaluate_config(f"--history={history}"))
    assert report["output_dir"] == output_dir
    assert sorted(io_utils.listdir(output_dir)) == sorted(
        [evaluate.REPORT_FILE, *report["plots"].values()])
    assert set(report["plots"]) == {"roc", "precision_recall", "confusion_matrix",
                                    "reliability", "training_curves"}
    assert io_utils.read_json(f"{output_dir}/{evaluate.REPORT_FILE}") == json.loads(
        json.dumps(report))
    for name in report["plots"].values():
        with io_utils.open(f"{output_dir}/{name}", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
    assert curves_only == {"training_curves": f"{store}/model/{evaluate.TRAINING_CURVES_FILE}"}
    assert io_utils.isfile(curves_only["training_curves"])


@pytest.mark.slow
def test_distill_writes_its_student_to_a_store_and_resumes_from_its_labels_there(
        tiny_training_run, tiny_hub_modules, tmp_path):
    """A local teacher, a student whose model_dir and export_dir are on ram://: the student's
    encoder module, the teacher's labels and the backups go there; the run, interrupted, is
    resumed from them without labelling again."""
    store = f"ram://{uuid.uuid4().hex}"
    train_data = io_utils.join(io_utils.dirname(tiny_training_run["model_dir"]), "train.jsonl")
    config = distill_config(
        *tiny_train_args(tiny_hub_modules, f"{store}/model", f"{store}/export",
                         f"--train_data={train_data}", "--train_steps=4",
                         "--checkpoint_steps=2"),
        f"--teacher={tiny_training_run['export_dir']}", "--student_num_layers=1")
    with _local_disk_watched(tmp_path / "cwd", tmp_path / "temp"):
        with pytest.raises(Crash):
            distill.run(config, callbacks=[CrashAtStep(3)])
        labels = io_utils.read_json(f"{store}/model/{distill.TEACHER_LABELS_FILE}")
        assert io_utils.isfile(f"{store}/model/{distill.STUDENT_ENCODER}/saved_model.pb")

        def no_labelling(*args, **kwargs):
            raise AssertionError("the resumed run labelled the texts again")

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(distill, "label", no_labelling)
            result = distill.run(config)
        served = _served_probabilities(result.export_path, REVIEWS)
    assert labels["teacher"] == tiny_training_run["saved_model"]
    assert result.optimizer_steps == 4
    assert result.export_path == f"{store}/export/1"
    assert len(served) == 2 and all(0.0 <= p <= 1.0 for p in served)
    assert io_utils.read_json(f"{store}/model/{distill.TEACHER_LABELS_FILE}") == labels


@pytest.mark.slow
def test_evaluate_predict_and_distill_from_an_export_on_ram(ram_run, tiny_hub_modules,
                                                          corpus_splits, tmp_path):
    """The rest of the run from the export on ram://: evaluated (its report beside it there),
    predicted, and distilled into a student on ram:// too."""
    result, export_dir, store = ram_run["result"], ram_run["export_dir"], ram_run["store"]
    test_file = f"{store}/data/test.jsonl"
    io_utils.copy(write_jsonl(tmp_path / "test.jsonl", corpus_splits["test"], 40), test_file)
    with _local_disk_watched(tmp_path / "cwd", tmp_path / "temp"):
        report = evaluate.run(evaluate_config(f"--saved_model={export_dir}",
                                              f"--data={test_file}"))
        predicted = predict.Predictor(export_dir)(REVIEWS)[0]
        student = distill.run(distill_config(
            *tiny_train_args(tiny_hub_modules, f"{store}/student", f"{store}/student_export",
                             f"--train_data={test_file}", "--train_steps=2"),
            f"--teacher={export_dir}", "--student_num_layers=1"))
    assert report["output_dir"] == f"{export_dir}/eval-1"
    assert io_utils.isfile(f"{export_dir}/eval-1/{evaluate.REPORT_FILE}")
    assert report["num_examples"] == 40
    expected = result.text_classifier(tf.constant(REVIEWS)).numpy()[:, -1]
    assert predicted.ravel().tolist() == pytest.approx(expected, abs=1e-5)
    assert student.export_path == f"{store}/student_export/1"


def _train_command(cwd, *args):
    return subprocess.run([sys.executable, "-m", "bert_tf2.train", *args], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_command_on_ram_exits_0_and_creates_no_local_folder(
        tmp_path, tiny_hub_modules, train_file):
    store = f"ram://{uuid.uuid4().hex}"
    finished = _train_command(tmp_path, *_args(tiny_hub_modules, f"{store}/model",
                                               f"{store}/export", train_file,
                                               "--train_steps=4"))
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert os.listdir(tmp_path) == []
    assert _ram_named_entries(tempfile.gettempdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("store, expected", [
    ("s3://my-bucket/sentiment", r"--model_dir=s3://my-bucket/sentiment/model: TensorFlow "
                                 r"\S+ has no file system for s3:// .*tensorflow-io.*"),
    ("gs://bert-tf2-unreachable/sentiment", r"--model_dir=gs://bert-tf2-unreachable/"
                                            r"sentiment/model: .+"),
])
def test_train_command_refuses_a_store_it_cannot_write_before_writing(
        store, expected, tmp_path, tiny_hub_modules, train_file):
    finished = _train_command(tmp_path, *_args(tiny_hub_modules, f"{store}/model",
                                               f"{store}/export", train_file))
    assert finished.returncode == 1
    last_line = finished.stderr.strip().splitlines()[-1]
    assert re.fullmatch("train: " + expected, last_line), finished.stderr[-2000:]
    assert "Traceback" not in finished.stderr
    assert os.listdir(tmp_path) == []
