"""A stand-in for tensorflow_model_server that answers from a loaded SavedModel.

TF Serving itself is not installed here, so the clients talk to servers on 127.0.0.1
(ephemeral ports) that answer as it does: a gRPC server built on the real
`PredictionServiceServicer` base, and an `http.server` speaking TF Serving's REST JSON.
`grpc_server(backend)` and `rest_server(backend)` run one for the length of a `with` block.
"""

import concurrent.futures
import contextlib
import http.server
import json
import re
import threading
from typing import Iterator

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import grpc
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from bert_tf2 import export


class ServingError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


class SavedModelBackend:
    """Answers Predict/Classify requests from a loaded SavedModel as TF Serving does.

    `fail_next` makes the next N requests answer UNAVAILABLE (what TF Serving says while the
    model is loading) to exercise client retries; `calls` counts requests.
    """

    def __init__(self, loaded_model, model_name: str, version: int = 1):
        self.loaded = loaded_model
        self.model_name = model_name
        self.version = version
        self.fail_next = 0
        self.calls = 0
        self._lock = threading.Lock()

    def _admit(self, model_spec):
        with self._lock:
            self.calls += 1
            if self.fail_next > 0:
                self.fail_next -= 1
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "model is loading")
        version = model_spec.version.value if model_spec.HasField("version") else None
        if model_spec.name != self.model_name or version not in (None, self.version):
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: {model_spec.name}")
        name = model_spec.signature_name or "serving_default"
        if name not in self.loaded.signatures:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Serving signature name: \"{name}\" not found")
        return self.loaded.signatures[name]

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        signature = self._admit(request.model_spec)
        inputs = {key: tf.constant(tf.make_ndarray(proto))
                  for key, proto in request.inputs.items()}
        try:
            outputs = signature(**inputs)
        except (TypeError, tf.errors.InvalidArgumentError) as error:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = self.version
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response

    def classify(self, request: classification_pb2.ClassificationRequest
                 ) -> classification_pb2.ClassificationResponse:
        signature = self._admit(request.model_spec)
        examples = [example.SerializeToString()
                    for example in request.input.example_list.examples]
        if not examples:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "ClassificationRequest::input is empty.")
        try:
            outputs = signature(**{export.CLASSIFY_INPUTS: tf.constant(examples)})
        except (TypeError, tf.errors.InvalidArgumentError) as error:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
        response = classification_pb2.ClassificationResponse()
        response.model_spec.name = self.model_name
        classes = outputs[export.CLASSIFY_OUTPUT_CLASSES].numpy()
        scores = outputs[export.CLASSIFY_OUTPUT_SCORES].numpy()
        for row_classes, row_scores in zip(classes, scores):
            classifications = response.result.classifications.add()
            for label, score in zip(row_classes, row_scores):
                classifications.classes.add(label=label.decode("utf-8"), score=float(score))
        return response


class GrpcServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, backend: SavedModelBackend):
        self.backend = backend

    def _answer(self, method, request, context):
        try:
            return method(request)
        except ServingError as error:
            context.abort(error.code, str(error))

    def Predict(self, request, context):  # noqa: N802 (gRPC method name)
        return self._answer(self.backend.predict, request, context)

    def Classify(self, request, context):  # noqa: N802 (gRPC method name)
        return self._answer(self.backend.classify, request, context)


_HTTP_STATUS = {grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.NOT_FOUND: 404,
                grpc.StatusCode.INVALID_ARGUMENT: 400}
_REST_PATH = re.compile(r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                        r":(?P<verb>predict|classify)")


def json_to_example(features: dict) -> tf.train.Example:
    """TF Serving's REST conversion of {"feature": value(s)} for string features."""
    example = tf.train.Example()
    for key, value in features.items():
        values = value if isinstance(value, list) else [value]
        example.features.feature[key].bytes_list.value.extend(
            v.encode("utf-8") for v in values)
    return example


class RestHandler(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST API (row format) over the backend in `self.server.backend`."""

    def log_message(self, *args):  # keep the test output quiet
        pass

    def _reply(self, status: int, body: dict):
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 (http.server method name)
        match = _REST_PATH.fullmatch(self.path)
        if not match:
            self._reply(404, {"error": f"Malformed request: POST {self.path}"})
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        backend = self.server.backend
        try:
            if match["verb"] == "predict":
                self._reply(200, self._predict(backend, match, body))
            else:
                self._reply(200, self._classify(backend, match, body))
        except ServingError as error:
            self._reply(_HTTP_STATUS.get(error.code, 500), {"error": str(error)})

    @staticmethod
    def _spec(spec, match, body):
        spec.name = match["name"]
        spec.signature_name = body.get("signature_name", "")
        if match["version"]:
            spec.version.value = int(match["version"])

    def _predict(self, backend, match, body):
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, match, body)
        instances = body["instances"]
        keys = instances[0].keys() if isinstance(instances[0], dict) else [export.TEXT_INPUT]
        for key in keys:
            column = [row[key] if isinstance(row, dict) else row for row in instances]
            request.inputs[key].CopyFrom(tf.make_tensor_proto(
                [value.encode("utf-8") for value in column], dtype=tf.string))
        # TF Serving writes DT_STRING outputs as JSON strings.
        outputs = {key: [value.decode("utf-8") if isinstance(value, bytes) else value
                         for value in tf.make_ndarray(proto).tolist()]
                   for key, proto in backend.predict(request).outputs.items()}
        return {"predictions": [dict(zip(outputs, row)) for row in zip(*outputs.values())]}

    def _classify(self, backend, match, body):
        request = classification_pb2.ClassificationRequest()
        self._spec(request.model_spec, match, body)
        for features in body["examples"]:
            request.input.example_list.examples.add().CopyFrom(json_to_example(features))
        result = backend.classify(request).result
        return {"results": [[[c.label, c.score] for c in item.classes]
                            for item in result.classifications]}


@contextlib.contextmanager
def grpc_server(backend: SavedModelBackend) -> Iterator[str]:
    """Serves `backend` over gRPC on a loopback port; yields its HOST:PORT."""
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        GrpcServicer(backend), server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port, "could not bind a loopback port"
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait(timeout=10)


@contextlib.contextmanager
def rest_server(backend: SavedModelBackend) -> Iterator[str]:
    """Serves `backend` over TF Serving's REST API on a loopback port; yields its HOST:PORT."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RestHandler)
    server.backend = backend
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
