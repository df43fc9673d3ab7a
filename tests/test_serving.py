"""The export drops into TF Serving: signatures, warm-up, versions, models.config and clients.

TF Serving itself is not installed here, so what it would do is checked piece by piece:
TensorFlow's own `saved_model_cli` reads the signatures and runs the export on raw strings;
the warm-up records are parsed with the serving protos and replayed against the loaded model;
and the clients talk to the stand-in servers of tests/fake_serving.py, which answer from the
loaded SavedModel as TF Serving does.
"""

import http.server
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import flags
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the export's preprocessing needs its ops)
from google.protobuf import text_format
from tensorflow.core.protobuf import fingerprint_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry
from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from bert_tf2 import cli, export, io_utils
from bert_tf2.serving import client as client_lib
from bert_tf2.serving import config as config_lib
from tests import fake_serving
from tests.conftest import REPO_ROOT
from tests.fake_serving import SavedModelBackend
from tests.tiny_fixtures import parse_train_flags

MODEL_NAME = "sentiment"
TEXTS = ["这本书写得太好了，强烈推荐！", "质量很差，非常失望。", "很好", ""]
BIN_DIR = pathlib.Path(sys.executable).parent
CLI_TIMEOUT_S = 120


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def saved_model(tiny_training_run) -> str:
    return tiny_training_run["saved_model"]


@pytest.fixture(scope="module")
def loaded(saved_model):
    return tf.saved_model.load(saved_model)


@pytest.fixture(scope="module")
def reference(loaded):
    """serving_default's P(positive) for TEXTS, computed in process."""
    return loaded.signatures["serving_default"](text=tf.constant(TEXTS))["probability"].numpy()


@pytest.fixture(scope="module")
def cli_outputs(saved_model):
    """`saved_model_cli show --all` and `run` on the export, started together.

    `run` goes through bert_tf2.serving.saved_model_cli (TF's tool with the TF Text ops
    registered); "plain_run" is TF's own binary, which cannot load them.
    """
    run_args = ["run", "--dir", saved_model, "--tag_set", "serve",
                "--signature_def", "serving_default", "--input_exprs", 'text=["很好","很差"]']
    commands = {
        "show": [str(BIN_DIR / "saved_model_cli"), "show", "--dir", saved_model, "--all"],
        "run": [sys.executable, "-m", "bert_tf2.serving.saved_model_cli", *run_args],
        "plain_run": [str(BIN_DIR / "saved_model_cli"), *run_args],
    }
    processes = {name: subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
                 for name, command in commands.items()}
    outputs = {}
    for name, process in processes.items():
        try:
            stdout, stderr = process.communicate(timeout=CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
        if name == "plain_run":
            outputs[name] = (process.returncode, stderr)
            continue
        assert process.returncode == 0, f"{name} failed:\n{stderr[-3000:]}"
        outputs[name] = stdout
    return outputs


def free_loopback_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def grpc_server(loaded):
    backend = SavedModelBackend(loaded, MODEL_NAME)
    with fake_serving.grpc_server(backend) as address:
        yield backend, address


@pytest.fixture(scope="module")
def rest_server(loaded):
    backend = SavedModelBackend(loaded, MODEL_NAME)
    with fake_serving.rest_server(backend) as address:
        yield backend, address


# ------------------------------------------------------------------ signatures on disk

def _signature_blocks(show_output: str) -> dict:
    blocks = re.split(r"^signature_def\['([^']+)'\]:\n", show_output, flags=re.M)
    return dict(zip(blocks[1::2], blocks[2::2]))


def _tensor_info(block: str, kind: str, key: str):
    match = re.search(rf"{kind}\['{key}'\] tensor_info:\n\s+dtype: (\w+)\n\s+shape: (.*)\n",
                      block)
    assert match, f"no {kind}['{key}'] in:\n{block}"
    return match.group(1), match.group(2).strip()


def test_saved_model_cli_show_lists_both_signatures(cli_outputs):
    blocks = _signature_blocks(cli_outputs["show"])
    assert {"serving_default", "classify"} <= set(blocks)

    serving = blocks["serving_default"]
    assert _tensor_info(serving, "inputs", "text") == ("DT_STRING", "(-1)")
    assert _tensor_info(serving, "outputs", "probability") == ("DT_FLOAT", "(-1)")
    assert _tensor_info(serving, "outputs", "label") == ("DT_INT64", "(-1)")
    assert "Method name is: tensorflow/serving/predict" in serving
    assert len(re.findall(r"inputs\['", serving)) == 1

    classify = blocks["classify"]
    assert _tensor_info(classify, "inputs", "inputs") == ("DT_STRING", "(-1)")
    assert _tensor_info(classify, "outputs", "scores") == ("DT_FLOAT", "(-1, 2)")
    assert _tensor_info(classify, "outputs", "classes") == ("DT_STRING", "(-1, 2)")
    assert "Method name is: tensorflow/serving/classify" in classify
    # TF Serving's classifier wants exactly one input and only classes/scores outputs.
    assert len(re.findall(r"inputs\['", classify)) == 1
    assert len(re.findall(r"outputs\['", classify)) == 2


def test_saved_model_cli_run_answers_raw_strings(cli_outputs, loaded):
    results = dict(re.findall(r"Result for output key (\w+):\n(\[[^\]]*\])", cli_outputs["run"]))
    assert set(results) == {"probability", "label"}, cli_outputs["run"]
    probability = np.array(results["probability"].strip("[]").split(), dtype=np.float32)
    label = np.array(results["label"].strip("[]").split(), dtype=np.int64)
    expected = loaded.signatures["serving_default"](text=tf.constant(["很好", "很差"]))
    np.testing.assert_allclose(probability, expected["probability"].numpy(), atol=1e-5)
    np.testing.assert_array_equal(label, (probability >= 0.5).astype(np.int64))

    # What docs/serving.md says: without the TF Text ops nothing can run the export.
    returncode, stderr = cli_outputs["plain_run"]
    assert returncode != 0 and "Op type not registered" in stderr


def test_signature_defs_are_valid_for_tf_serving(saved_model):
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(pathlib.Path(saved_model, "saved_model.pb").read_bytes())
    signature_defs = proto.meta_graphs[0].signature_def
    is_valid = tf.compat.v1.saved_model.signature_def_utils.is_valid_signature
    assert signature_defs["classify"].method_name == "tensorflow/serving/classify"
    assert is_valid(signature_defs["classify"])  # TF's own check of a Classify signature
    assert signature_defs["serving_default"].method_name == "tensorflow/serving/predict"
    assert is_valid(signature_defs["serving_default"])
    # saved_model.pb was rewritten after saving; its fingerprint was recomputed to match.
    expected = fingerprint_pb2.FingerprintDef.FromString(
        fingerprinting.CreateFingerprintDef(saved_model))
    assert (tf.saved_model.experimental.read_fingerprint(saved_model).saved_model_checksum
            == expected.saved_model_checksum)


def test_custom_ops_all_come_from_tf_text_and_are_documented(saved_model):
    ops = export.custom_ops(saved_model)
    assert ops, "expected the TF Text preprocessing ops"
    # tensorflow_text is the only op library this process loads, so registered = TF Text.
    assert all(op_def_registry.get(op) is not None for op in ops), ops
    docs = (REPO_ROOT / "docs" / "serving.md").read_text(encoding="utf-8")
    assert [op for op in sorted(ops) if f"`{op}`" not in docs] == [], \
        "docs/serving.md must list every custom op the export needs"


# ------------------------------------------------------------------ signatures in process

def test_classify_signature_on_serialized_examples(loaded, reference):
    serialized = [export.text_example(text).SerializeToString() for text in TEXTS]
    outputs = loaded.signatures["classify"](inputs=tf.constant(serialized))
    scores = outputs["scores"].numpy()
    classes = outputs["classes"].numpy()
    assert scores.dtype == np.float32 and scores.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(scores[:, 1], reference, atol=1e-6)
    assert classes.tolist() == [[b"0", b"1"]] * len(TEXTS)

    no_text = tf.train.Example().SerializeToString()
    with pytest.raises(tf.errors.InvalidArgumentError, match="text"):
        loaded.signatures["classify"](inputs=tf.constant([no_text]))


def _read_warmup(saved_model):
    path = os.path.join(saved_model, "assets.extra", "tf_serving_warmup_requests")
    assert os.path.isfile(path), "every export carries a warm-up file"
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(path)]


def test_warmup_requests_parse_and_replay_against_the_model(saved_model, loaded):
    logs = _read_warmup(saved_model)
    assert 0 < len(logs) <= 1000  # TF Serving's limit
    kinds = [log.WhichOneof("log_type") for log in logs]
    assert "predict_log" in kinds and "classify_log" in kinds

    backend = SavedModelBackend(loaded, model_name="")  # warm-up records name no model
    for log in logs:
        if log.HasField("predict_log"):
            request = log.predict_log.request
            assert request.model_spec.signature_name == "serving_default"
            texts = [t.decode("utf-8") for t in tf.make_ndarray(request.inputs["text"])]
            assert texts and all(re.search(r"[\u4e00-\u9fff]", t) for t in texts)
            outputs = {key: tf.make_ndarray(value)
                       for key, value in backend.predict(request).outputs.items()}
            assert outputs["probability"].shape == (len(texts),)
            assert np.all(np.isfinite(outputs["probability"]))
            assert np.all((outputs["probability"] >= 0) & (outputs["probability"] <= 1))
        else:
            request = log.classify_log.request
            assert request.model_spec.signature_name == "classify"
            result = backend.classify(request).result
            assert len(result.classifications) == len(request.input.example_list.examples)
            for item in result.classifications:
                assert [c.label for c in item.classes] == ["0", "1"]
                assert all(np.isfinite(c.score) for c in item.classes)


# -------------------------------------------------------- atomic export and retention

class _Wrapper(tf.Module):
    """The loaded export as a text classifier (strings -> [batch, 1]), to re-export quickly."""

    def __init__(self, loaded_model):
        super().__init__()
        self.loaded = loaded_model

    def __call__(self, text, training=False):
        probability = self.loaded.signatures["serving_default"](text=text)["probability"]
        return tf.reshape(probability, [-1, 1])


def test_retention_applies_only_after_a_complete_export(loaded, tmp_path, monkeypatch):
    export_dir = tmp_path / "export"
    for version in (1, 2):  # older versions (contents do not matter to retention)
        (export_dir / str(version)).mkdir(parents=True)
    (export_dir / "notes").mkdir()  # not a version: never touched

    path = export.export_text_classifier(_Wrapper(loaded), str(export_dir), keep=2)
    assert path.endswith(os.sep + "3")
    assert io_utils.existing_versions(str(export_dir)) == [2, 3]
    assert sorted(os.listdir(export_dir)) == ["2", "3", "notes"]  # no hidden leftovers
    assert (export_dir / "3" / export.WARMUP_FILE).is_file()

    # A failure while writing the warm-up file (late inside the scratch directory) leaves no
    # version 4, no scratch directory, and prunes nothing.
    def fail(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(export, "write_warmup_requests", fail)
    with pytest.raises(OSError, match="disk full"):
        export.export_text_classifier(_Wrapper(loaded), str(export_dir), keep=1)
    assert sorted(os.listdir(export_dir)) == ["2", "3", "notes"]

    with pytest.raises(ValueError):
        export.export_text_classifier(_Wrapper(loaded), str(export_dir), keep=0)


def test_prune_versions_keeps_the_newest(tmp_path):
    for version in (1, 5, 10, 12):
        (tmp_path / str(version)).mkdir()
    assert export.prune_versions(str(tmp_path), keep=2) == [1, 5]
    assert sorted(os.listdir(tmp_path)) == ["10", "12"]
    assert export.prune_versions(str(tmp_path), keep=5) == []


def test_keep_exports_flag_parses():
    assert parse_train_flags("--keep_exports=3").keep_exports == 3
    assert parse_train_flags().keep_exports is None
    with pytest.raises(flags.IllegalFlagValueError):
        parse_train_flags("--keep_exports=0")


# ------------------------------------------------------------------------ models.config

@pytest.mark.parametrize("policy, expected", [
    ("latest:2", "latest { num_versions: 2 }"),
    ("latest", "latest { num_versions: 1 }"),
    ("all", "all { }"),
    ("specific:3, 1", "specific { versions: 1 versions: 3 }"),
])
def test_model_server_config(policy, expected):
    config = config_lib.build_model_server_config(
        model_name=MODEL_NAME, base_path="/models/sentiment", version_policy=policy)
    text = config_lib.config_text(config)
    parsed = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    (model,) = parsed.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (
        MODEL_NAME, "/models/sentiment", "tensorflow")
    assert text_format.MessageToString(model.model_version_policy, as_one_line=True) == expected


@pytest.mark.parametrize("policy", ["latest:0", "newest", "specific:", "specific:0", "all:2"])
def test_bad_version_policies_are_rejected(policy):
    with pytest.raises(ValueError, match="version policy"):
        config_lib.parse_version_policy(policy)


def _flag_values(define, *args):
    flag_values = flags.FlagValues()
    define(flag_values)
    flag_values(["prog", *args])
    return flag_values


def test_config_cli_writes_models_config(tmp_path, saved_model, capsys):
    export_dir = os.path.dirname(saved_model)
    output = tmp_path / "serving" / "models.config"
    config_lib.main([], _flag_values(
        config_lib.define_flags, f"--export_dir={export_dir}", f"--model_name={MODEL_NAME}",
        "--version_policy=latest:2", f"--output={output}"))
    parsed = config_lib.parse_config_text(output.read_text(encoding="utf-8"))
    (model,) = parsed.model_config_list.config
    assert model.base_path == os.path.abspath(export_dir)
    assert model.model_version_policy.latest.num_versions == 2
    assert 'model_platform: "tensorflow"' in output.read_text(encoding="utf-8")

    with pytest.raises(SystemExit) as exited:
        config_lib.main([], _flag_values(config_lib.define_flags,
                                         f"--export_dir={export_dir}", "--version_policy=x"))
    assert exited.value.code == 1
    assert re.fullmatch(r"serving\.config: version policy 'x' [^\n]*\n", capsys.readouterr().err)


def test_config_cli_refuses_a_version_dir_and_an_unwritable_output(tmp_path, capsys):
    version = tmp_path / "export" / "3"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    with pytest.raises(SystemExit) as exited:
        config_lib.main([], _flag_values(config_lib.define_flags, f"--export_dir={version}"))
    assert exited.value.code == 1
    assert re.fullmatch(rf"serving.config: --export_dir={re.escape(str(version))}: that is a "
                        rf"version directory; pass its parent "
                        rf"{re.escape(str(tmp_path / 'export'))}\n", capsys.readouterr().err)
    (tmp_path / "a_file").write_text("")
    output = tmp_path / "a_file" / "models.config"
    with pytest.raises(SystemExit) as exited:
        config_lib.main([], _flag_values(config_lib.define_flags,
                                         f"--export_dir={tmp_path / 'export'}",
                                         f"--output={output}"))
    error = capsys.readouterr().err
    assert exited.value.code == 1 and ".tmp-" not in error
    assert error.startswith(f"serving.config: --output={output} cannot be written: ")


def test_client_reads_input_in_its_encoding(tmp_path):
    path = tmp_path / "reviews.txt"
    path.write_bytes("质量很差\r\n\n很好\n".encode("gb18030"))
    assert client_lib.read_texts(["先"], str(path), "gb18030") == ["先", "质量很差", "很好"]
    with pytest.raises(cli.UserError, match=r"reviews\.txt:1: not valid UTF-8 .*"
                       "--encoding=gb18030"):
        client_lib.read_texts([], str(path))
    assert _flag_values(client_lib.define_flags, "--encoding=auto").encoding == "auto"


# ---------------------------------------------------------------------------- clients

@pytest.mark.parametrize("signature", ["serving_default", "classify"])
def test_grpc_client_predict_and_classify(grpc_server, reference, signature):
    backend, address = grpc_server
    with client_lib.GrpcClient(address, MODEL_NAME, timeout=30, retries=0) as client:
        predictions = client.classify_texts(TEXTS, signature)
    assert [p.text for p in predictions] == TEXTS
    np.testing.assert_allclose([p.probability for p in predictions], reference, atol=1e-5)
    assert [p.label for p in predictions] == [int(p >= 0.5) for p in reference]


@pytest.mark.parametrize("signature", ["serving_default", "classify"])
def test_rest_client_predict_and_classify(rest_server, reference, signature):
    backend, address = rest_server
    client = client_lib.RestClient(address, MODEL_NAME, model_version=1, timeout=30, retries=0)
    predictions = client.classify_texts(TEXTS, signature)
    assert [p.text for p in predictions] == TEXTS
    np.testing.assert_allclose([p.probability for p in predictions], reference, atol=1e-5)
    assert [p.label for p in predictions] == [int(p >= 0.5) for p in reference]


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_client_retries_while_the_server_is_unavailable(grpc_server, rest_server, protocol,
                                                       reference):
    backend, address = grpc_server if protocol == "grpc" else rest_server
    try:
        backend.fail_next = 1  # UNAVAILABLE / HTTP 503 once, then answers
        calls_before = backend.calls
        with client_lib.make_client(protocol, address, MODEL_NAME, timeout=30, retries=2,
                                    backoff=0.01) as client:
            predictions = client.classify_texts(TEXTS[:1])
        assert backend.calls - calls_before == 2
        assert predictions[0].probability == pytest.approx(float(reference[0]), abs=1e-5)

        backend.fail_next = 5  # more failures than attempts
        with client_lib.make_client(protocol, address, MODEL_NAME, timeout=30, retries=2,
                                    backoff=0.01) as client:
            with pytest.raises(client_lib.ServerUnavailableError, match="after 3 attempts"):
                client.classify_texts(TEXTS[:1])
    finally:
        backend.fail_next = 0


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_unreachable_server_is_a_clear_error(protocol):
    address = f"127.0.0.1:{free_loopback_port()}"
    with client_lib.make_client(protocol, address, MODEL_NAME, timeout=5, retries=2,
                                backoff=0.01) as client:
        with pytest.raises(client_lib.ServerUnavailableError) as error:
            client.classify_texts(["很好"])
    assert address in str(error.value) and "after 3 attempts" in str(error.value)


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_unknown_model_is_a_clear_error(grpc_server, rest_server, protocol):
    _, address = grpc_server if protocol == "grpc" else rest_server
    with client_lib.make_client(protocol, address, "no_such_model", timeout=30,
                                retries=3, backoff=0.01) as client:
        with pytest.raises(client_lib.ModelNotFoundError, match="no_such_model"):
            client.classify_texts(["很好"])


def test_rest_client_rejects_a_bad_response(tmp_path):
    class Broken(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"not json!")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        client = client_lib.RestClient(f"127.0.0.1:{server.server_address[1]}", MODEL_NAME,
                                       timeout=10, retries=0)
        with pytest.raises(client_lib.BadResponseError, match="non-JSON"):
            client.classify_texts(["很好"])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_client_cli_prints_json_lines(rest_server, reference, tmp_path, capsys):
    _, address = rest_server
    input_file = tmp_path / "reviews.txt"
    input_file.write_text("\n".join(TEXTS[1:3]) + "\n\n", encoding="utf-8")
    client_lib.main([], _flag_values(
        client_lib.define_flags, f"--server={address}", "--protocol=rest",
        f"--model_name={MODEL_NAME}", f"--text={TEXTS[0]}", f"--input={input_file}",
        "--signature=classify"))
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["text"] for row in rows] == TEXTS[:3]
    np.testing.assert_allclose([row["probability"] for row in rows], reference[:3], atol=1e-5)

    with pytest.raises(SystemExit) as exited:
        client_lib.main([], _flag_values(
            client_lib.define_flags, f"--server=127.0.0.1:{free_loopback_port()}",
            "--text=很好", "--retries=0"))
    assert exited.value.code == 1
    assert re.match("serving.client: .*unreachable", capsys.readouterr().err)
    with pytest.raises(SystemExit) as exited:
        client_lib.main([], _flag_values(client_lib.define_flags, f"--server={address}"))
    assert exited.value.code == 1
    assert capsys.readouterr().err == ("serving.client: give at least one --text or an --input "
                                       "file\n")


def test_batching_parameters_fit_the_sub_batches(tmp_path):
    from bert_tf2 import config
    path = tmp_path / "batching_parameters.txt"
    config_lib.main([], _flag_values(config_lib.define_flags,
                                     f"--export_dir={tmp_path / 'export'}",
                                     f"--output={tmp_path / 'models.config'}",
                                     f"--batching_parameters={path}", "--max_batch_size=256"))
    text = path.read_text()
    sizes = [int(size) for size in re.findall(r"^allowed_batch_sizes: (\d+)$", text, re.M)]
    # TF Serving's rules: ascending, the last equal to max_batch_size.
    assert sizes == sorted(set(sizes)) and sizes[-1] == 256
    assert re.search(r"^max_batch_size \{ value: 256 \}$", text, re.M)
    assert {64, 128, 192} <= set(sizes) and all(
        size % config.SERVING_SUB_BATCH == 0 for size in sizes if size > 32)
    assert "pad_variable_length_inputs: false" in text
