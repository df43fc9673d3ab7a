"""Asks a running TF Serving for sentiment predictions on raw Chinese text, over REST or gRPC.

  python -m bert_tf2.serving.client --server=localhost:8501 --protocol=rest \
      --model_name=sentiment --text=这本书写得太好了 --text=质量很差
  python -m bert_tf2.serving.client --server=localhost:8500 --protocol=grpc \
      --signature=classify --input=reviews.txt

Prints one JSON line per text: {"text": ..., "label": 0|1, "probability": P(positive)}. For a
multi-class model "label" is the class name and "probability" its probability, with "scores"
the distribution (a list in class order from serving_default, {class: score} from classify);
for a multi-label model serving_default gives "label" as the 0/1 list over the classes.

  signature        REST                                          gRPC
  serving_default  POST /v1/models/NAME:predict                  PredictionService/Predict
                   {"signature_name": "serving_default",
                    "instances": [{"text": "..."}, ...]}
                   -> {"predictions": [{"probability": p, "label": l}, ...]}
  classify         POST /v1/models/NAME:classify                 PredictionService/Classify
                   {"signature_name": "classify",
                    "examples": [{"text": "..."}, ...]}
                   -> {"results": [[["0", p0], ["1", p1]], ...]}

(`/versions/V` goes before the colon with --model_version.) REST uses only the standard library.
An attempt that finds the server unavailable (connection refused or reset, gRPC UNAVAILABLE,
HTTP 503 -- what TF Serving answers while a model is still loading) is retried with
exponential backoff; other failures are reported at once, as a `ServingError` whose message
says what went wrong: unreachable after N attempts, model not found, server error, bad response.
"""

import dataclasses
import http.client
import json
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import Callable, Iterable, List, Optional, Sequence

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import flags
import grpc
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from bert_tf2 import cli
from bert_tf2 import data
from bert_tf2 import export
from bert_tf2 import flags as project_flags

FLAGS = flags.FLAGS
SIGNATURES = (export.SERVING_SIGNATURE, export.CLASSIFY_SIGNATURE)
DEFAULT_BATCH_SIZE = 64


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What the server answered for one text; fields that are None are left out of output."""

    text: str
    label: object                        # binary 0/1; multiclass the class; multilabel 0/1s
    probability: Optional[float]         # binary P(positive); multiclass the label's
    scores: Optional[object] = None      # multi: [score, ...] or {class: score}
    text_b: Optional[str] = None         # the second text, for a model of pairs

    def as_dict(self) -> dict:
        return {key: value for key, value in dataclasses.asdict(self).items()
                if value is not None}


def text_fields(text) -> dict:
    """{"text": ...} for a text, {"text": ..., "text_b": ...} for a (text, text_b) pair: the
    inputs of serving_default, and the features of classify's tf.Examples."""
    if isinstance(text, tuple):
        return {export.TEXT_INPUT: text[0], export.TEXT_B_INPUT: text[1]}
    return {export.TEXT_INPUT: text}


class ServingError(cli.UserError):
    """TF Serving could not answer the request; the message says why."""


class ServerUnavailableError(ServingError):
    """No server answered (or it stayed unavailable) after every attempt."""


class ModelNotFoundError(ServingError):
    """The server runs, but does not serve the requested model (or version, or signature)."""


class BadResponseError(ServingError):
    """The server answered with something that is not the expected response."""


class _Unavailable(Exception):
    """One attempt found the server unavailable; worth retrying."""


def call_with_retries(attempt: Callable[[], object], *, retries: int, backoff: float,
                      target: str, sleep: Callable[[float], None] = time.sleep):
    """Runs `attempt` up to 1 + `retries` times while it raises `_Unavailable`."""
    for index in range(retries + 1):
        try:
            return attempt()
        except _Unavailable as error:
            last_error = error
            if index < retries:
                sleep(backoff * 2 ** index)
    attempts = retries + 1
    raise ServerUnavailableError(
        f"TF Serving at {target} is unreachable or unavailable after {attempts} "
        f"attempt{'s' if attempts > 1 else ''}: {last_error}")


def prediction_from_probability(text, probability: float) -> Prediction:
    return _prediction(text, label=int(probability >= export.DECISION_THRESHOLD),
                       probability=float(probability))


def _prediction(text, **answer) -> Prediction:
    return Prediction(**text_fields(text), **answer)


def prediction_from_outputs(text: str, row: dict) -> Prediction:
    """A serving_default answer for one text: {output name: value} (see bert_tf2.export)."""
    if export.PROBABILITY_OUTPUT in row:
        return prediction_from_probability(text, float(row[export.PROBABILITY_OUTPUT]))
    scores = [float(score) for score in row[export.PROBABILITIES_OUTPUT]]
    if export.LABELS_OUTPUT in row:
        return _prediction(text, label=[int(on) for on in row[export.LABELS_OUTPUT]],
                           probability=None, scores=scores)
    label = row[export.LABEL_OUTPUT]
    return _prediction(text, label=label.decode("utf-8") if isinstance(label, bytes)
                       else str(label), probability=max(scores), scores=scores)


def prediction_from_scores(text: str, scores_by_label: dict) -> Prediction:
    """A classify answer for one text: binary as P(positive), else the top class."""
    if set(scores_by_label) == set(export.CLASS_NAMES):
        return prediction_from_probability(text, _positive_score(scores_by_label))
    label = max(scores_by_label, key=scores_by_label.get)
    return _prediction(text, label=label, probability=scores_by_label[label],
                       scores=dict(scores_by_label))


def _batches(texts: Sequence[str], batch_size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(texts), batch_size):
        yield texts[start:start + batch_size]


class _Client:
    """What both protocols share: batching, retries and the signature switch."""

    def __init__(self, server: str, model_name: str, *, model_version: Optional[int] = None,
                 timeout: float = 10.0, retries: int = 3, backoff: float = 0.5,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        if not server or ":" not in server:
            raise ValueError(f"server {server!r} must be HOST:PORT")
        self.server = server
        self.model_name = model_name
        self.model_version = model_version
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.batch_size = batch_size

    def classify_texts(self, texts: Sequence[str],
                       signature: str = export.SERVING_SIGNATURE) -> List[Prediction]:
        """Predictions for `texts` through `signature` (serving_default or classify)."""
        if signature not in SIGNATURES:
            raise ValueError(f"signature must be one of {SIGNATURES}, got {signature!r}")
        call = self.predict if signature == export.SERVING_SIGNATURE else self.classify
        return [prediction for batch in _batches(list(texts), self.batch_size)
                for prediction in call(batch)]

    def predict(self, texts: Sequence[str]) -> List[Prediction]:
        raise NotImplementedError

    def classify(self, texts: Sequence[str]) -> List[Prediction]:
        raise NotImplementedError

    def _with_retries(self, attempt):
        return call_with_retries(attempt, retries=self.retries, backoff=self.backoff,
                                 target=self.server)

    def _check_count(self, texts, results, what):
        if len(results) != len(texts):
            raise BadResponseError(f"{what}: {len(results)} results for {len(texts)} texts")

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class RestClient(_Client):
    """TF Serving's REST API (default port 8501), with urllib only."""

    def url(self, verb: str) -> str:
        version = f"/versions/{self.model_version}" if self.model_version else ""
        return f"http://{self.server}/v1/models/{self.model_name}{version}:{verb}"

    def predict(self, texts: Sequence[str]) -> List[Prediction]:
        body = {"signature_name": export.SERVING_SIGNATURE,
                "instances": [text_fields(text) for text in texts]}
        response = self._post("predict", body)
        rows = response.get("predictions")
        if not isinstance(rows, list):
            raise BadResponseError(f"predict response has no 'predictions' list: "
                                   f"{_shorten(response)}")
        self._check_count(texts, rows, "predict")
        try:
            return [prediction_from_outputs(text, row) for text, row in zip(texts, rows)]
        except (KeyError, TypeError, ValueError) as error:
            raise BadResponseError(f"predict response rows lack a numeric "
                                   f"'{export.PROBABILITY_OUTPUT}' (or "
                                   f"'{export.PROBABILITIES_OUTPUT}'): {_shorten(rows)}"
                                   ) from error

    def classify(self, texts: Sequence[str]) -> List[Prediction]:
        body = {"signature_name": export.CLASSIFY_SIGNATURE,
                "examples": [text_fields(text) for text in texts]}
        response = self._post("classify", body)
        # TF Serving writes "results" (json_tensor_test.cc); its header comment says "result".
        results = response.get("results", response.get("result"))
        if not isinstance(results, list):
            raise BadResponseError(f"classify response has no 'results' list: "
                                   f"{_shorten(response)}")
        self._check_count(texts, results, "classify")
        try:
            return [prediction_from_scores(text, {str(label): float(score)
                                                  for label, score in result})
                    for text, result in zip(texts, results)]
        except (TypeError, ValueError) as error:
            raise BadResponseError(f"classify results are not [[label, score], ...] lists: "
                                   f"{_shorten(results)}") from error

    def _post(self, verb: str, body: dict) -> dict:
        url = self.url(verb)
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")

        def attempt():
            request = urllib.request.Request(
                url, data=data, method="POST",
                headers={"Content-Type": "application/json; charset=utf-8"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
            except urllib.error.HTTPError as error:
                message = _rest_error_message(error)
                if error.code == 503:
                    raise _Unavailable(f"HTTP 503 from {url}: {message}") from error
                if error.code == 404:
                    raise ModelNotFoundError(
                        f"model {self.model_name!r} not found at {url}: {message}") from error
                raise ServingError(f"HTTP {error.code} from {url}: {message}") from error
            except urllib.error.URLError as error:
                raise _connection_error(url, error.reason, self.timeout) from error
            except (ConnectionError, http.client.HTTPException, TimeoutError) as error:
                raise _connection_error(url, error, self.timeout) from error
            try:
                decoded = json.loads(payload.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise BadResponseError(f"{url} answered with non-JSON: "
                                       f"{_shorten(payload)}") from error
            if not isinstance(decoded, dict):
                raise BadResponseError(f"{url} answered with {_shorten(decoded)}")
            return decoded

        return self._with_retries(attempt)


def _connection_error(url: str, reason, timeout: float) -> Exception:
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return ServingError(f"no answer from {url} within {timeout:g} s")
    if isinstance(reason, socket.gaierror):
        return ServerUnavailableError(f"cannot resolve the host of {url}: {reason}")
    if isinstance(reason, (ConnectionError, http.client.HTTPException, OSError)):
        return _Unavailable(f"{url}: {reason}")
    return ServingError(f"{url}: {reason}")


def _rest_error_message(error: urllib.error.HTTPError) -> str:
    """TF Serving's REST errors are {"error": "..."}; anything else is shown shortened."""
    try:
        body = error.read().decode("utf-8", errors="replace")
    except OSError:
        return error.reason or ""
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return _shorten(body) or str(error.reason)


def _positive_score(scores_by_label) -> float:
    positive = export.CLASS_NAMES[1]
    if positive not in scores_by_label:
        raise ValueError(f"no class {positive!r} in {scores_by_label}")
    return scores_by_label[positive]


def _shorten(value, limit: int = 200) -> str:
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


class GrpcClient(_Client):
    """TF Serving's gRPC PredictionService (default port 8500)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        reconnect_ms = max(int(self.backoff * 1000), 100)
        self._channel = grpc.insecure_channel(self.server, options=[
            ("grpc.initial_reconnect_backoff_ms", reconnect_ms),
            ("grpc.min_reconnect_backoff_ms", reconnect_ms)])
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def close(self):
        self._channel.close()

    def _model_spec(self, spec, signature: str):
        spec.name = self.model_name
        spec.signature_name = signature
        if self.model_version:
            spec.version.value = self.model_version

    def predict(self, texts: Sequence[str]) -> List[Prediction]:
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, export.SERVING_SIGNATURE)
        for name in text_fields(texts[0]):
            request.inputs[name].CopyFrom(tf.make_tensor_proto(
                [text_fields(text)[name].encode("utf-8") for text in texts], dtype=tf.string,
                shape=[len(texts)]))
        response = self._call(self._stub.Predict, request)
        if not {export.PROBABILITY_OUTPUT, export.PROBABILITIES_OUTPUT} & set(response.outputs):
            raise BadResponseError(f"Predict response has no '{export.PROBABILITY_OUTPUT}' "
                                   f"output (outputs: {sorted(response.outputs)})")
        try:
            columns = {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}
            self._check_count(texts, next(iter(columns.values())), "Predict")
            return [prediction_from_outputs(text, {name: column[i]
                                                   for name, column in columns.items()})
                    for i, text in enumerate(texts)]
        except (TypeError, ValueError, KeyError) as error:
            raise BadResponseError(f"Predict response: unreadable outputs: {error}") from error

    def classify(self, texts: Sequence[str]) -> List[Prediction]:
        request = classification_pb2.ClassificationRequest()
        self._model_spec(request.model_spec, export.CLASSIFY_SIGNATURE)
        for text in texts:
            request.input.example_list.examples.add().CopyFrom(
                export.text_example(*text) if isinstance(text, tuple) else
                export.text_example(text))
        response = self._call(self._stub.Classify, request)
        classifications = response.result.classifications
        self._check_count(texts, classifications, "Classify")
        try:
            return [prediction_from_scores(text, {c.label: c.score for c in item.classes})
                    for text, item in zip(texts, classifications)]
        except ValueError as error:
            raise BadResponseError(f"Classify response: {error}") from error

    def _call(self, method, request):
        def attempt():
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as error:
                code, details = error.code(), error.details()
                if code == grpc.StatusCode.UNAVAILABLE:
                    raise _Unavailable(f"UNAVAILABLE: {details}") from error
                if code == grpc.StatusCode.NOT_FOUND:
                    raise ModelNotFoundError(f"model {self.model_name!r} not found at "
                                             f"{self.server}: {details}") from error
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise ServingError(f"no answer from {self.server} within "
                                       f"{self.timeout:g} s") from error
                raise ServingError(f"{code.name} from {self.server}: {details}") from error

        return self._with_retries(attempt)


def make_client(protocol: str, server: str, model_name: str, **kwargs) -> _Client:
    """A RestClient or GrpcClient; kwargs: model_version, timeout, retries, backoff."""
    clients = {"rest": RestClient, "grpc": GrpcClient}
    if protocol not in clients:
        raise ValueError(f"protocol must be 'rest' or 'grpc', got {protocol!r}")
    return clients[protocol](server, model_name, **kwargs)


def read_texts(texts: Sequence[str], input_path: Optional[str],
               encoding: str = "utf-8", *, texts_b: Sequence[str] = (),
               pairs: bool = False) -> List[object]:
    """--text values, then the non-blank lines of --input ('-': stdin) in `encoding`.

    With `pairs` (or `texts_b`, one for each --text) the result holds (text, text_b) pairs:
    --text with --text_b, and --input lines split at their first tab.
    """
    pairs = pairs or bool(texts_b)
    if texts_b and len(texts_b) != len(texts):
        raise cli.UserError(f"{len(texts)} --text but {len(texts_b)} --text_b: give one "
                            "--text_b for each --text")
    result = list(zip(texts, texts_b)) if pairs else list(texts)
    if input_path:
        name = "<stdin>" if input_path == "-" else input_path
        lines = data.iter_lines(name, stream=sys.stdin.buffer if input_path == "-" else None,
                                encoding=encoding)
        for number, line in enumerate(lines, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if pairs and "\t" not in line:
                raise data.DataError(f"{name}:{number}: no tab; with --pairs each line is "
                                     "'text<TAB>text_b'")
            result.append(tuple(line.split("\t", 1)) if pairs else line)
    return result


@cli.one_line_errors("serving.client")
def main(argv, flag_values: Optional[flags.FlagValues] = None) -> None:
    del argv
    flags_ = flag_values or FLAGS
    texts = read_texts(flags_.text, flags_.input, flags_.encoding, texts_b=flags_.text_b,
                       pairs=flags_.pairs)
    if not texts:
        raise cli.UserError("give at least one --text or an --input file")
    try:
        client = make_client(flags_.protocol, flags_.server, flags_.model_name,
                             model_version=flags_.model_version, timeout=flags_.timeout,
                             retries=flags_.retries, backoff=flags_.backoff)
    except ValueError as error:
        raise cli.UserError(str(error)) from None
    with client:
        predictions = client.classify_texts(texts, flags_.signature)
    for prediction in predictions:
        print(json.dumps(prediction.as_dict(), ensure_ascii=False), flush=True)


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    project_flags.define_serving_client_flags(flag_values)


if __name__ == "__main__":
    cli.run("serving.client", main, define_flags)
