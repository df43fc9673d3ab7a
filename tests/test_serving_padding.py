"""The export pays only for the tokens a request holds, and answers what fixed padding answers."""

import bert_tf2  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the export's preprocessing needs its ops)

from bert_tf2 import export, input_pipeline, model
from tests.tiny_fixtures import TINY_SEQ_LENGTH


def _reviews_of_every_length(corpus_splits, count: int = 400):
    """`count` test reviews spread over the length range, shortest to longer than seq_length."""
    texts = sorted(corpus_splits["test"].texts, key=len)
    picks = np.linspace(0, len(texts) - 1, count).astype(int)
    return [texts[i] for i in picks] + ["", "好"]


@pytest.fixture(scope="module")
def classifiers(tiny_hub_modules):
    preprocessor = model.load_preprocessor(tiny_hub_modules.preprocess)
    classifier = model.build_classifier(tiny_hub_modules.encoder)
    return {padding: model.build_text_classifier(preprocessor, classifier,
                                                 seq_length=TINY_SEQ_LENGTH,
                                                 dynamic_padding=padding)
            for padding in (False, True)}


def test_the_export_answers_what_fixed_padding_answers(classifiers, corpus_splits, tmp_path):
    texts = _reviews_of_every_length(corpus_splits)
    assert max(map(len, texts)) > TINY_SEQ_LENGTH  # the truncated ones too
    fixed = classifiers[False](tf.constant(texts)).numpy()[:, 0]
    path = export.export_text_classifier(classifiers[True], str(tmp_path))
    serve = tf.saved_model.load(path).signatures["serving_default"]
    # In request order, whatever order the model classified them in.
    shuffled = np.random.default_rng(3).permutation(len(texts))
    served = serve(text=tf.constant([texts[i] for i in shuffled]))["probability"].numpy()
    np.testing.assert_allclose(served, fixed[shuffled], rtol=0, atol=1e-5)


def test_a_large_request_is_classified_in_bounded_sub_batches(classifiers, corpus_splits):
    texts = list(corpus_splits["test"].texts[:3 * model.SERVING_SUB_BATCH + 5])
    fixed = classifiers[False](tf.constant(texts)).numpy()
    dynamic = classifiers[True](tf.constant(texts)).numpy()
    assert dynamic.shape == fixed.shape == (len(texts), 1)
    np.testing.assert_allclose(dynamic, fixed, rtol=0, atol=1e-5)
    assert classifiers[True](tf.constant([], tf.string)).shape == (0, 1)


def test_warm_up_requests_cover_every_length_bucket():
    seq_length = 128
    buckets = input_pipeline.length_buckets(seq_length)
    texts = export.warmup_texts(seq_length)
    # Each Chinese character is one token, plus [CLS] and [SEP].
    reached = {next(b for b in buckets if b >= min(len(text) + 2, seq_length))
               for text in texts}
    assert reached == set(buckets)
    assert export.warmup_texts() == export.WARMUP_REVIEWS
