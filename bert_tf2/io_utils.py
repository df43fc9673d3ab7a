"""Filesystem helpers shared by every stage that writes files: atomic directories and files,
the numeric versions of an export directory, and the checks that an output can be written
before the work that makes it starts. No TensorFlow."""

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import uuid
from typing import Iterator, List, Optional, TextIO

from bert_tf2 import cli


class OutputError(cli.UserError):
    """An output path cannot take the output; the message names the path (never a scratch
    file) and the flag it came from when known."""


def check_writable_dir(path: str, flag: str) -> None:
    """Creates directory `path` if needed and proves it writable with a probe file, or raises
    an OutputError naming `flag`."""
    try:
        _probe(path)
    except OSError as error:
        raise OutputError(f"{flag}={path} is not a writable directory: "
                          f"{error.strerror or error}") from error


def check_writable_file(path: str, flag: str, *, overwrite: bool = True) -> None:
    """Raises an OutputError naming `flag` unless `atomic_file(path)` can write `path`.

    Refused: a directory, an existing file unless `overwrite`, a directory that cannot be
    created or written.
    """
    if os.path.isdir(path):
        raise OutputError(f"{flag}={path} is a directory; name a file")
    if not overwrite and os.path.lexists(path):
        raise OutputError(f"{flag}={path} already exists; pass --overwrite to replace it, or "
                          "choose another file")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        _probe(directory)
    except OSError as error:
        raise OutputError(f"{flag}={path} cannot be written: {directory} is not a writable "
                          f"directory ({error.strerror or error})") from error


def _probe(directory: str) -> None:
    """Raises OSError unless `directory` is, or can be made, a writable directory.

    Creates nothing: a command that then fails (a model that does not load) leaves no empty
    directory behind. An existing directory is proved by writing a file into it; a missing
    one by its nearest existing ancestor, which must be a writable directory.
    """
    existing = os.path.abspath(directory)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), existing)
    if existing != os.path.abspath(directory):
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), existing)
        return
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-"):
        pass


@contextlib.contextmanager
def scratch_directory(parent: str, name: str) -> Iterator[str]:
    """Yields a new hidden directory `parent/.NAME.tmp-*`, removed if the block fails or leaves
    it there (a block that succeeds normally renames it into place: `publish_directory`)."""
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def publish_directory(scratch: str, final_path: str) -> str:
    """Renames the finished directory `scratch` to `final_path` (same filesystem: atomic), or
    raises FileExistsError if something is there; returns `final_path`."""
    # os.rename would silently replace an empty directory, hence the check; a directory
    # that appears between the two is never empty (it was renamed into place) and fails it.
    if os.path.lexists(final_path):
        raise FileExistsError(f"{final_path} already exists; refusing to overwrite it")
    try:
        os.rename(scratch, final_path)
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
            raise FileExistsError(f"{final_path} already exists; refusing to overwrite "
                                  "it") from error
        raise
    return final_path


def publish_next_version(scratch: str, export_dir: str) -> str:
    """Renames the finished directory `scratch` to `export_dir/<version>`, the version one more
    than the highest there; returns that path.

    The version is claimed by the rename itself, so exports running at the same time into one
    `export_dir` each get their own: one that finds its number taken tries the next.
    """
    version = (existing_versions(export_dir) or [0])[-1] + 1
    while True:
        try:
            return publish_directory(scratch, os.path.join(export_dir, str(version)))
        except FileExistsError:
            version += 1


@contextlib.contextmanager
def atomic_directory(final_path: str) -> Iterator[str]:
    """Yields a scratch directory that becomes `final_path` only if the block succeeds.

    The scratch directory is a hidden sibling of `final_path` (same filesystem), so the final
    `os.rename` is atomic: readers such as TF Serving, which polls the export directory, see
    either no directory or a complete one, never a half-written one. On any error the scratch
    directory is removed. An existing `final_path` is never overwritten.
    """
    final_path = os.path.abspath(final_path)
    if os.path.exists(final_path):
        raise FileExistsError(f"{final_path} already exists; refusing to overwrite it")
    with scratch_directory(os.path.dirname(final_path), os.path.basename(final_path)) as scratch:
        yield scratch
        publish_directory(scratch, final_path)


@contextlib.contextmanager
def atomic_file(path: str, *, errors: str = "strict", newline: Optional[str] = None
                ) -> Iterator[TextIO]:
    """Yields a UTF-8 text file that replaces `path` only if the block succeeds.

    It is a hidden sibling of `path` (same filesystem), renamed onto it at the end, so a reader
    (or a server polling the file) sees the old file or the new one, never half of one. On any
    error it is removed and `path` is left as it was. A path that cannot be written raises an
    OutputError naming `path`.
    """
    directory = os.path.dirname(os.path.abspath(path))
    # Not tempfile.mkstemp: its 0600 mode would stick to the output; "x" honours the umask.
    scratch = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        with _naming(path):
            os.makedirs(directory, exist_ok=True)
            f = open(scratch, "x", encoding="utf-8", errors=errors, newline=newline)
        with f:
            yield f
        with _naming(path):
            os.replace(scratch, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(scratch)
        raise


@contextlib.contextmanager
def _naming(path: str) -> Iterator[None]:
    """Turns an OSError of the block into an OutputError that names `path`."""
    try:
        yield
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from error


def write_json(value: object, path: str, *, sort_keys: bool = False) -> None:
    """`value` as indented UTF-8 JSON in `path`, written atomically (`atomic_file`)."""
    with atomic_file(path) as f:
        json.dump(value, f, ensure_ascii=False, indent=2, sort_keys=sort_keys, allow_nan=False)
        f.write("\n")


def read_json(path: str) -> Optional[object]:
    """The JSON value in `path` (as `write_json` writes it), or None where there is no file."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def existing_versions(export_dir: str) -> List[int]:
    """The numeric version directories under `export_dir` (what TF Serving serves), ascending."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir)
                  if re.fullmatch(r"\d+", name)
                  and os.path.isdir(os.path.join(export_dir, name)))
