"""Filesystem helpers shared by every stage that writes files: atomic directories and files,
and the numeric versions of an export directory. No TensorFlow."""

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from typing import Iterator, List, Optional, TextIO


@contextlib.contextmanager
def atomic_directory(final_path: str) -> Iterator[str]:
    """Yields a scratch directory that becomes `final_path` only if the block succeeds.

    The scratch directory is a hidden sibling of `final_path` (same filesystem), so the final
    `os.rename` is atomic: readers such as TF Serving, which polls the export directory, see
    either no directory or a complete one, never a half-written one. On any error the scratch
    directory is removed. An existing `final_path` is never overwritten.
    """
    final_path = os.path.abspath(final_path)
    parent = os.path.dirname(final_path)
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(final_path):
        raise FileExistsError(f"{final_path} already exists; refusing to overwrite it")
    scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(final_path)}.tmp-", dir=parent)
    try:
        yield scratch
        os.rename(scratch, final_path)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str, *, errors: str = "strict", newline: Optional[str] = None
                ) -> Iterator[TextIO]:
    """Yields a UTF-8 text file that replaces `path` only if the block succeeds.

    It is a hidden sibling of `path` (same filesystem), renamed onto it at the end, so a reader
    (or a server polling the file) sees the old file or the new one, never half of one. On any
    error it is removed and `path` is left as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Not tempfile.mkstemp: its 0600 mode would stick to the output; "x" honours the umask.
    scratch = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        with open(scratch, "x", encoding="utf-8", errors=errors, newline=newline) as f:
            yield f
        os.replace(scratch, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(scratch)
        raise


def write_json(value: object, path: str, *, sort_keys: bool = False) -> None:
    """`value` as indented UTF-8 JSON in `path`, written atomically (`atomic_file`)."""
    with atomic_file(path) as f:
        json.dump(value, f, ensure_ascii=False, indent=2, sort_keys=sort_keys, allow_nan=False)
        f.write("\n")


def existing_versions(export_dir: str) -> List[int]:
    """The numeric version directories under `export_dir` (what TF Serving serves), ascending."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir)
                  if re.fullmatch(r"\d+", name)
                  and os.path.isdir(os.path.join(export_dir, name)))
