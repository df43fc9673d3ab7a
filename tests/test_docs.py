"""The docs name only flags and modules that exist.

Every `--flag` in README.md, docs/*.md and configs/*.flags is checked against the flags of the
command it is given to: the last one named before it in its segment (a code-block line with
its `\\` continuations, one `code span`, or the prose around them): `python -m bert_tf2.X`,
`bazel run //bert_tf2:X --`, a benchmark, TF Serving, or a foreign tool (not checked). A flag
in a segment that names no command must be a flag of some bert_tf2 command or benchmark. An
enum flag's `--flag=value` must name one of its values. A flag file must be accepted whole by
one command. Every `bert_tf2.X` (`.Y`) named must be a module (and a name defined at the top of
that module). Only flag definitions are imported, no model is built.
"""

import ast
import dataclasses
import functools
import importlib
import importlib.util
import pathlib
import re
from typing import Dict, FrozenSet, Iterator, List, Optional, Tuple

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import flags
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "bert_tf2"
DOC_FILES = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md")])
FLAG_FILES = sorted((REPO_ROOT / "configs").glob("*.flags"))

# The commands of bert_tf2 (`python -m bert_tf2.X`) whose flags come from `define_flags`.
ABSL_COMMANDS = ("train", "distill", "pretrain", "hub_modules", "vocab", "evaluate", "predict",
                 "export_lite", "beam_predict", "serving.client", "serving.config",
                 "prepare_data")
# bert_tf2.serving.saved_model_cli is TensorFlow's saved_model_cli, whose flags its module
# defines at import.
SAVED_MODEL_CLI = "serving.saved_model_cli"
# TF Serving's flags (tensorflow_model_server, and the tensorflow/serving image's entry
# point): not bert_tf2's, and nothing here can list them, so the ones the docs use are named.
TF_SERVING_FLAGS = frozenset({
    "port", "rest_api_port", "model_name", "model_base_path", "model_config_file",
    "model_config_file_poll_wait_seconds", "file_system_poll_wait_seconds",
    "enable_batching", "batching_parameters_file", "enable_model_warmup",
    "enable_signature_method_name_check", "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism", "rest_api_num_threads", "monitoring_config_file",
    "max_num_load_retries", "load_retry_interval_micros"})
TF_SERVING = "tool:tensorflow_model_server"  # the flags after the image name or the binary
# Flags of Bazel, pytest and tests/pytest_runner.py that the docs name in prose, away from
# the command they belong to.
TEST_TOOL_FLAGS = frozenset({
    "config", "test_filter", "test_arg", "test_env", "test_output", "run_under",
    "override_repository", "sandbox_debug", "local_test_jobs", "nocache_test_results",
    "incompatible_strict_action_env", "basetemp", "dist", "tiny_fixtures"})
# Tools whose flags are their own (checked by nobody here): a flag after one of them is skipped.
FOREIGN_TOOLS = (r"bazel|pytest|pip3?|docker|curl|git|apt-get|saved_model_cli|uv|bash|python3?"
                 r"|gcloud|kubectl")
# A flag: `--` and an absl name; a hyphenated one (pip's --no-cache-dir) is another tool's.
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9_]*)(?![\w-])")
_COMMAND = re.compile(
    r"-m\s+(?P<module>(?:bert_tf2|benchmarks)\.[\w.]+)"
    r"|//bert_tf2:(?P<target>\w+)\s+--\s"
    r"|(?P<script>benchmarks/\w+\.py)"
    r"|(?P<serving>tensorflow/serving(?::[\w.-]+)?|tensorflow_model_server)(?![\w./-])"
    rf"|(?<![\w./-])(?P<tool>{FOREIGN_TOOLS})(?![\w.-])")
_VALUE = re.compile(r"=([\w-]+)(?![\w.,:/|*-])")
_MODULE_NAME = re.compile(r"(?<![\w.])bert_tf2((?:\.\w+)+)")


@dataclasses.dataclass(frozen=True)
class FlagUse:
    """One `--flag` in a doc: where, and the command it is given to (None: no command)."""

    where: str
    flag: str
    command: Optional[str]
    value: Optional[str] = None  # what `--flag=value` sets, when it is a plain word


# ---------------------------------------------------------------------------------------------
# What exists
# ---------------------------------------------------------------------------------------------

def _flag_names(flag_values: flags.FlagValues) -> FrozenSet[str]:
    names = set(flag_values)
    # A boolean flag --x is also --nox.
    names |= {f"no{name}" for name in flag_values if flag_values[name].boolean}
    return frozenset(names)


@functools.lru_cache(maxsize=None)
def absl_builtin_flags() -> FrozenSet[str]:
    """--flagfile, --undefok, --help*, --v, --logtostderr ...: every absl app has them."""
    from absl import app, logging  # noqa: F401  pylint: disable=unused-import
    by_module = flags.FLAGS.flags_by_module_dict()
    names = {flag.name for module, defined in by_module.items() if module.startswith("absl")
             for flag in defined}
    return frozenset(names | {"flagfile", "undefok"})


def _source_defined_flags(path: pathlib.Path) -> FrozenSet[str]:
    """The flags a module defines at import (`flags.DEFINE_x("name", ...)`), read from its
    source rather than imported (importing would define them in the global FLAGS)."""
    source = path.read_text(encoding="utf-8")
    found = re.findall(r"DEFINE_\w+\(\s*(?:name=)?[\"'](\w+)[\"']", source)
    bools = re.findall(r"DEFINE_bool(?:ean)?\(\s*(?:name=)?[\"'](\w+)[\"']", source)
    return frozenset(found) | {f"no{name}" for name in bools}


@functools.lru_cache(maxsize=None)
def beam_pipeline_options() -> FrozenSet[str]:
    """Beam's pipeline options, which beam_predict passes on (beam_predict.pipeline_options)."""
    from apache_beam.options import pipeline_options
    parser = pipeline_options._BeamArgumentParser(  # pylint: disable=protected-access
        allow_abbrev=False)
    for options_class in {str(c): c for c in
                          pipeline_options.PipelineOptions.__subclasses__()}.values():
        options_class._add_argparse_args(parser)  # pylint: disable=protected-access
    return frozenset(option[2:] for option in parser._option_string_actions  # pylint: disable=protected-access
                     if option.startswith("--"))


@functools.lru_cache(maxsize=None)
def defined_flags(command: str) -> flags.FlagValues:
    """The flags `python -m bert_tf2.<command>` defines (its `define_flags`)."""
    flag_values = flags.FlagValues()
    importlib.import_module(f"bert_tf2.{command}").define_flags(flag_values)
    return flag_values


@functools.lru_cache(maxsize=None)
def command_flags(command: str) -> FrozenSet[str]:
    """The flags `python -m bert_tf2.<command>` (or `-m benchmarks.<name>`) accepts."""
    if command.startswith("benchmarks."):
        return absl_builtin_flags() | _source_defined_flags(
            REPO_ROOT / (command.replace(".", "/") + ".py"))
    if command == SAVED_MODEL_CLI:
        origin = importlib.util.find_spec("tensorflow.python.tools.saved_model_cli").origin
        return absl_builtin_flags() | _source_defined_flags(pathlib.Path(origin))
    names = _flag_names(defined_flags(command)) | absl_builtin_flags()
    return names | beam_pipeline_options() if command == "beam_predict" else names


@functools.lru_cache(maxsize=None)
def command_choices(command: Optional[str]) -> Dict[str, FrozenSet[str]]:
    """{enum flag: its values} of a bert_tf2 command (None: of all of them, merged)."""
    if command is None:
        merged = {}
        for name in ABSL_COMMANDS:
            for flag, values in command_choices(name).items():
                merged[flag] = merged.get(flag, frozenset()) | values
        return merged
    flag_values = defined_flags(command)
    return {name: frozenset(flag_values[name].parser.enum_values) for name in flag_values
            if getattr(flag_values[name].parser, "enum_values", None)}


@functools.lru_cache(maxsize=None)
def all_project_flags() -> FrozenSet[str]:
    return frozenset().union(*(command_flags(command) for command in ABSL_COMMANDS))


@functools.lru_cache(maxsize=None)
def benchmark_flags() -> FrozenSet[str]:
    return frozenset().union(*(command_flags(f"benchmarks.{path.stem}")
                               for path in (REPO_ROOT / "benchmarks").glob("*.py")))


def module_problem(dotted: str) -> Optional[str]:
    """Why `bert_tf2<dotted>` (e.g. '.lite.read_metadata') names nothing, or None."""
    parts = dotted.strip(".").split(".")
    path = PACKAGE_DIR
    while parts and (path / parts[0]).is_dir():
        path = path / parts.pop(0)
    if not parts:
        return None if (path / "__init__.py").is_file() else f"{path} is not a package"
    module = path / f"{parts.pop(0)}.py"
    if not module.is_file():
        return f"no module {module.relative_to(REPO_ROOT)}"
    if parts and parts[0] not in _top_level_names(module):
        return f"{module.relative_to(REPO_ROOT)} defines no {parts[0]!r}"
    return None


@functools.lru_cache(maxsize=None)
def _top_level_names(module: pathlib.Path) -> FrozenSet[str]:
    names = set()
    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return frozenset(names)


# ---------------------------------------------------------------------------------------------
# What the docs say
# ---------------------------------------------------------------------------------------------

def logical_lines(path: pathlib.Path) -> Iterator[Tuple[int, str, bool]]:
    """(line number, text, in a fenced code block) of each line of `path`, with `\\`-continued
    lines joined."""
    pending, start, fenced = "", 0, False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line, fenced
        pending = ""
    if pending:
        yield start, pending, fenced


def segments(path: pathlib.Path) -> Iterator[Tuple[int, str]]:
    """(line number, text) of each stretch of `path` within which a command named applies to
    the flags after it: a line of a code block or flag file, each `code span` of a prose line,
    and the prose around them."""
    for number, line, fenced in logical_lines(path):
        if fenced or path.suffix != ".md":
            yield number, line
        else:
            yield from ((number, part) for part in line.split("`"))


def _command_at(match: re.Match) -> Optional[str]:
    if match.group("module"):
        module = match.group("module")
        return module[len("bert_tf2."):] if module.startswith("bert_tf2.") else module
    if match.group("target"):
        return match.group("target")
    if match.group("script"):
        return match.group("script")[:-len(".py")].replace("/", ".")
    if match.group("serving"):
        return TF_SERVING
    return "tool:" + match.group("tool")


def flag_uses(path: pathlib.Path) -> List[FlagUse]:
    """Each `--flag` of `path`, with the command named last before it in its segment."""
    uses = []
    for number, text in segments(path):
        commands = [(m.start(), _command_at(m)) for m in _COMMAND.finditer(text)]
        for match in _FLAG.finditer(text):
            before = [command for start, command in commands if start < match.start()]
            value = _VALUE.match(text, match.end())
            uses.append(FlagUse(f"{_shown(path)}:{number}", match.group(1),
                                before[-1] if before else None,
                                value.group(1) if value else None))
    return uses


def _shown(path: pathlib.Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if REPO_ROOT in path.parents else path.name


def flag_file_flags(path: pathlib.Path) -> List[str]:
    """The flags a flag file sets (its `--name=value` lines, comments left out)."""
    return [line.strip()[2:].split("=")[0]
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip().startswith("--")]


def flag_problem(use: FlagUse) -> Optional[str]:
    """Why `use` names a flag its command does not have, or None."""
    if use.command is None:
        known = all_project_flags() | benchmark_flags() | TF_SERVING_FLAGS | TEST_TOOL_FLAGS
        what = ("any bert_tf2 command or benchmark (or TF Serving, Bazel, pytest: "
                "tests/test_docs.py)")
    elif use.command == TF_SERVING:
        known, what = TF_SERVING_FLAGS, "TF Serving (tests/test_docs.TF_SERVING_FLAGS)"
    elif use.command.startswith("tool:"):
        return None
    elif not (REPO_ROOT / (_module_of(use.command).replace(".", "/") + ".py")).is_file():
        return f"{use.where}: python -m {_module_of(use.command)}: no such module"
    else:
        known, what = command_flags(use.command), f"python -m {_module_of(use.command)}"
    return None if use.flag in known else f"{use.where}: --{use.flag} is not a flag of {what}"


def value_problem(use: FlagUse) -> Optional[str]:
    """Why `use` sets an enum flag of bert_tf2 to a value it does not take, or None."""
    if use.value is None or not (use.command is None or use.command in ABSL_COMMANDS):
        return None
    choices = command_choices(use.command).get(use.flag)
    if choices is None or use.value in choices:
        return None
    return (f"{use.where}: --{use.flag}={use.value} is not one of its values "
            f"({', '.join(sorted(choices))})")


def _module_of(command: str) -> str:
    return command if command.startswith("benchmarks.") else f"bert_tf2.{command}"


def _all_flag_uses() -> List[FlagUse]:
    return [use for path in DOC_FILES + FLAG_FILES for use in flag_uses(path)]


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------

def test_every_flag_in_the_docs_exists_for_its_command():
    uses = _all_flag_uses()
    assert len(uses) > 300  # the docs were read
    assert {use.command for use in uses} >= {"train", "beam_predict", "evaluate", None}
    problems = [problem for problem in map(flag_problem, uses) if problem]
    assert not problems, "\n".join(problems)


def test_every_enum_flag_in_the_docs_has_a_value_it_takes():
    uses = [use for use in _all_flag_uses() if use.value]
    assert len([use for use in uses if use.flag in command_choices(None)]) > 30
    problems = [problem for problem in map(value_problem, uses) if problem]
    assert not problems, "\n".join(problems)


def test_every_flag_file_is_one_commands_flags():
    for path in FLAG_FILES:
        set_flags = flag_file_flags(path)
        assert set_flags, path
        assert [command for command in ABSL_COMMANDS
                if set(set_flags) <= command_flags(command)], (
            f"{_shown(path)}: no bert_tf2 command takes all of {set_flags}")


def test_every_module_named_in_the_docs_exists():
    problems, named = [], set()
    for path in DOC_FILES + FLAG_FILES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in _MODULE_NAME.finditer(line):
                named.add(match.group(1))
                problem = module_problem(match.group(1))
                if problem:
                    problems.append(f"{path.relative_to(REPO_ROOT)}:{number}: "
                                    f"bert_tf2{match.group(1)}: {problem}")
    assert len(named) > 20
    assert not problems, "\n".join(problems)


# What the checks catch: each line below, were it in a doc, would fail them.
@pytest.mark.parametrize("line, command", [
    ("python -m bert_tf2.train --flagfile=q.flags --static_shape", "train"),
    ("python -m bert_tf2.predict --saved_model=E \\\n    --input=x.csv --top_k=2 --beam_me_up",
     "predict"),
    ("python -m bert_tf2.evaluate --saved_model=E --text_column=t --label_colum=l", "evaluate"),
    ("python -m bert_tf2.beam_predict --saved_model=E --runner=DirectRunner --runer=x",
     "beam_predict"),
    ("| TPU | `--distribution_strategy=tpu --static_shapes --tpu_name=x` |", None),
    ("docker run -t tensorflow/serving:2.20.0 --rest_api_port=8501 --model_nmae=x", TF_SERVING),
    ("python -m benchmarks.beam_benchmark --rows=10 --colums=2", "benchmarks.beam_benchmark"),
])
def test_a_flag_that_does_not_exist_is_found(tmp_path, line, command):
    doc = tmp_path / "doc.md"
    doc.write_text(f"Some text.\n\n```sh\n{line}\n```\n", encoding="utf-8")
    uses = flag_uses(doc)
    assert {use.command for use in uses} == {command}
    problems = [problem for problem in map(flag_problem, uses) if problem]
    assert len(problems) == 1, problems
    assert re.search(r"--(static_shape|beam_me_up|label_colum|runer|tpu_name|model_nmae|colums) "
                     "is not a flag of", problems[0])


def test_a_value_an_enum_flag_does_not_take_is_found(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("Pass `--quantization=int4`, or `--task=multiclass`.\n\n```sh\n"
                   "python -m bert_tf2.train --distribution_strategy=gpu --task=binary\n```\n",
                   encoding="utf-8")
    problems = [problem for problem in map(value_problem, flag_uses(doc)) if problem]
    assert problems == [
        "doc.md:1: --quantization=int4 is not one of its values (dynamic, float16, int8, none)",
        "doc.md:4: --distribution_strategy=gpu is not one of its values (mirrored, "
        "multi_worker_mirrored, one_device, tpu)"]


def test_a_module_or_name_that_does_not_exist_is_found():
    assert module_problem(".lite.read_metadata") is None
    assert module_problem(".serving.client") is None
    assert module_problem(".serving") is None
    assert module_problem(".model.build_classifier_for") is None
    assert module_problem(".beam") == "no module bert_tf2/beam.py"
    assert module_problem(".lite.read_metadatas") == ("bert_tf2/lite.py defines no "
                                                      "'read_metadatas'")
    assert module_problem(".serving.clients") == "no module bert_tf2/serving/clients.py"


def test_a_flag_file_with_a_flag_no_command_takes_is_found(tmp_path):
    path = tmp_path / "x.flags"
    path.write_text("# comment --anything\n--epochs=3\n--quantization=int8\n",
                    encoding="utf-8")
    set_flags = flag_file_flags(path)
    assert set_flags == ["epochs", "quantization"]
    assert not [c for c in ABSL_COMMANDS if set(set_flags) <= command_flags(c)]
