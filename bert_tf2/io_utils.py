"""Filesystem helpers shared by the stages that write artifacts (hub modules, exports)."""

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


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
