"""Bazel py_test entry point: runs one pytest file, as `python -m pytest FILE` would.

    pytest_runner.py [--tiny_fixtures=DIR] tests/test_x.py [more pytest arguments]

The tests are pytest-style (fixtures from tests/conftest.py), so every py_test in tests/BUILD
has this file as its main and its own test file as the first argument. It runs from the
runfiles root (Bazel's working directory for tests), where pytest.ini is, so rootdir,
`tests.conftest` and the `bert_tf2` package resolve as they do from a checkout. It also wires
in what Bazel provides: the JUnit XML report (XML_OUTPUT_FILE), the per-test scratch directory
(TEST_TMPDIR), `bazel test --test_filter=EXPR` (TESTBRIDGE_TEST_ONLY, passed to `-k`), test
sharding (a target's `shard_count`: shard i of n runs the tests i, i + n, i + 2n, ... of the
file) and the tiny fixtures that //tests:tiny_fixtures built once for all targets
(`--tiny_fixtures=DIR`, passed to conftest.py as BERT_TF2_TINY_FIXTURES; see
tests/tiny_fixtures.py). Further arguments go to pytest (`--test_arg=-m --test_arg="not slow"`,
as --config=ci passes, runs a target's fast tier).
"""

import os
import pathlib
import sys


class _Shard:
    """pytest plugin: keeps every `total`-th collected test, starting at `index`."""

    def __init__(self, index: int, total: int):
        self.index, self.total = index, total

    def pytest_collection_modifyitems(self, config, items):
        config.hook.pytest_deselected(items=[item for i, item in enumerate(items)
                                             if i % self.total != self.index])
        items[:] = items[self.index::self.total]


def main(argv):
    # Running as a script put this file's directory (tests/) first on sys.path; `python -m
    # pytest` from the repository root would not, and tests/ on sys.path lets test modules be
    # imported twice under two names. pytest puts the root back itself (rootdir insertion).
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]

    import pytest  # pylint: disable=g-import-not-at-top  (after the sys.path fix)

    argv = list(argv)
    prefix = "--tiny_fixtures="
    if len(argv) > 1 and argv[1].startswith(prefix):
        os.environ["BERT_TF2_TINY_FIXTURES"] = os.path.abspath(argv.pop(1)[len(prefix):])
    args = ["-p", "no:cacheprovider", "-rs"]
    xml_output = os.environ.get("XML_OUTPUT_FILE")
    if xml_output:
        args.append(f"--junitxml={xml_output}")
    test_tmpdir = os.environ.get("TEST_TMPDIR")
    if test_tmpdir:
        args.append(f"--basetemp={os.path.join(test_tmpdir, 'pytest')}")
    test_filter = os.environ.get("TESTBRIDGE_TEST_ONLY")
    if test_filter:
        args += ["-k", test_filter]
    plugins = []
    if "TEST_TOTAL_SHARDS" in os.environ:
        pathlib.Path(os.environ["TEST_SHARD_STATUS_FILE"]).touch()  # "sharding understood"
        plugins.append(_Shard(int(os.environ["TEST_SHARD_INDEX"]),
                              int(os.environ["TEST_TOTAL_SHARDS"])))
    status = pytest.main(args + argv[1:], plugins=plugins)
    # With a marker expression (`-m "not slow"`, --config=ci) a shard may hold no test it
    # selects: nothing to run is then a pass, not a failure.
    if status == pytest.ExitCode.NO_TESTS_COLLECTED and "-m" in argv:
        return pytest.ExitCode.OK
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
