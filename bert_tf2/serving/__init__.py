"""Serving the exported model with TF Serving: configuration, clients and checks.

  config           python -m bert_tf2.serving.config: writes TF Serving's models.config
  client           python -m bert_tf2.serving.client: REST/gRPC client (Predict, Classify)
  saved_model_cli  python -m bert_tf2.serving.saved_model_cli: TensorFlow's saved_model_cli
                   with the TF Text ops registered, so `run` works on these exports

The export itself (signatures, warm-up requests, versions) is `bert_tf2.export`; deployment
is described in docs/serving.md.
"""
