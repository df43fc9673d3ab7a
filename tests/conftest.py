"""Shared fixtures: tiny vocab, tiny hub modules and one tiny trained-and-exported run.

Each is built once per session, the first time a test asks for it, by `tests.tiny_fixtures`
(under Bazel, once for all test targets: that module says how). Tests that need the real
Google Chinese BERT files use `real_layout_dir`, which skips with a reason when `../shared` is
not beside the checkout.
"""

import os
import pathlib

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import pytest

from tests import tiny_fixtures

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Tests that take these build or train models: they are slow (pytest.ini), like the tests that
# start a CLI process, which say so themselves.
_SLOW_FIXTURES = {"tiny_hub_modules", "dropout_free_modules", "two_layer_modules",
                  "tiny_training_run", "tiny_bert_config_file"}
REAL_LAYOUT_DIR = REPO_ROOT.parent / "shared" / "data" / "bert_zh_layout"


@pytest.fixture(scope="session")
def real_layout_dir() -> pathlib.Path:
    """The real Chinese BERT vocab/config/index files, or a skip saying why they are absent."""
    if not (REAL_LAYOUT_DIR / "vocab.txt").is_file():
        pytest.skip(f"real Chinese BERT layout not found at {REAL_LAYOUT_DIR} (it ships in "
                    "CI's ../shared, not in a fresh clone)")
    return REAL_LAYOUT_DIR


@pytest.fixture(scope="session")
def corpus_splits():
    from bert_tf2 import data
    return data.builtin_corpus_splits()


@pytest.fixture(scope="session")
def tiny_fixtures_dir(tmp_path_factory) -> pathlib.Path:
    """Where the tiny fixtures are: prebuilt by Bazel's //tests:tiny_fixtures, or built here.

    The pytest-xdist workers of one run share the directory (it is in their base temporary
    directories' parent), so each piece is built once per run rather than once per worker.
    """
    prebuilt = os.environ.get(tiny_fixtures.ENV_VAR)
    if prebuilt:
        return pathlib.Path(prebuilt)
    base = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        base = base.parent
    return base / "tiny_fixtures"


@pytest.fixture(scope="session")
def tiny_vocab_file(tiny_fixtures_dir, corpus_splits) -> str:
    return tiny_fixtures.vocab_file(tiny_fixtures_dir, corpus_splits)


@pytest.fixture(scope="session")
def tiny_hub_modules(tiny_fixtures_dir, tiny_vocab_file):
    return tiny_fixtures.hub_modules(tiny_fixtures_dir, tiny_vocab_file)


@pytest.fixture(scope="session")
def tiny_bert_config_file(tiny_fixtures_dir, tiny_vocab_file) -> str:
    return tiny_fixtures.bert_config_file(tiny_fixtures_dir, tiny_vocab_file)


@pytest.fixture(scope="session")
def dropout_free_modules(tiny_fixtures_dir, tiny_vocab_file):
    return tiny_fixtures.dropout_free_modules(tiny_fixtures_dir, tiny_vocab_file)


@pytest.fixture(scope="session")
def two_layer_modules(tiny_fixtures_dir, tiny_vocab_file):
    return tiny_fixtures.two_layer_modules(tiny_fixtures_dir, tiny_vocab_file)


@pytest.fixture(scope="session")
def tiny_training_run(tiny_fixtures_dir, tiny_hub_modules, corpus_splits):
    return tiny_fixtures.training_run(tiny_fixtures_dir, tiny_hub_modules, corpus_splits)


def pytest_collection_modifyitems(items):
    for item in items:
        if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
