"""The file layer every stage reads and writes through, and the atomic outputs built on it.

A path is local (plain Python: `open`, `os`, `shutil`) or a URL with a scheme (`gs://`,
`ram://`, `s3://` where a plugin provides it), which goes through TensorFlow's `tf.io.gfile`
(Model Garden's way), imported only when a URL is used. Errors of either kind are OSErrors
(FileNotFoundError, FileExistsError, PermissionError, ...); a scheme TensorFlow has no file
system for is a `NoFileSystemError`, one line naming the scheme and what to install.

On top: atomic files and directories, the numeric versions of an export directory, and the
checks that an output can be written before the work that makes it starts. A store without
atomic directory rename (`gs://`, `ram://`) gets its directories by a copy whose order
keeps a SavedModel unloadable until it is whole (`publish_directory`; docs/serving.md).
"""

import contextlib
import errno
import io
import json
import os
import posixpath
import re
import shutil
import tempfile
import threading
import uuid
from typing import IO, Iterator, List, Optional, TextIO, Tuple

from bert_tf2 import cli

# `scheme://...`: a URL for tf.io.gfile. One letter is a Windows drive, never a scheme.
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")
# `gs:/bucket` or `gs:bucket`: a URL that lost a slash (os.path.normpath does that); as a
# local path it would make a folder named `gs:`.
_MANGLED_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):(?!//)")
# The schemes tensorflow-io adds (none of them built into TensorFlow).
_TENSORFLOW_IO_SCHEMES = ("s3", "hdfs", "viewfs", "har", "az", "http", "https")
# The SavedModel files a loader starts from: written last when a version is copied file by
# file, so a version is unloadable until every other file of it is in place.
_SAVED_MODEL_ROOTS = ("saved_model.pb", "saved_model.pbtxt")
# How long `check_writable_dir` waits for a store to answer; TensorFlow's GCS client retries
# a refused connection for minutes (GCS_RETRY_CONFIG_MAX_RETRIES, 10 by default).
STORE_PROBE_SECONDS = 30.0


class OutputError(cli.UserError):
    """An output path cannot take the output; the message names the path (never a scratch
    file) and the flag it came from when known."""


class NoFileSystemError(cli.UserError):
    """A URL whose scheme no installed TensorFlow file system serves."""


class UnreachableStoreError(OutputError):
    """A store that does not answer (no network, no credentials): the URL and the cause."""


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------

def scheme(path: str) -> Optional[str]:
    """`gs` for `gs://bucket/x`; None for a local path."""
    match = _URL.match(os.fspath(path))
    return match.group(1).lower() if match else None


def is_remote(path: str) -> bool:
    """Whether `path` is a URL (a scheme, `tf.io.gfile`'s) rather than a local path."""
    return scheme(path) is not None


def join(path: str, *parts: str) -> str:
    """os.path.join for a local path; `/`-joined for a URL."""
    return posixpath.join(path, *parts) if is_remote(path) else os.path.join(path, *parts)


def dirname(path: str) -> str:
    """The parent of `path`: absolute for a local path, the URL without its last part."""
    if is_remote(path):
        return posixpath.dirname(path.rstrip("/"))
    return os.path.dirname(os.path.abspath(path))


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(
        os.path.normpath(path))


def abspath(path: str) -> str:
    """os.path.abspath for a local path; a URL as it is."""
    return path if is_remote(path) else os.path.abspath(path)


def resolved(path: str) -> str:
    """`path` in one spelling per file: a local path absolute with its links resolved
    (os.path.realpath); a URL with its scheme in lower case and `.`, `..`, doubled and
    trailing slashes resolved (`GS://b/x/../y/` -> `gs://b/y`)."""
    if not is_remote(path):
        return os.path.realpath(path)
    name, rest = path.split("://", 1)
    return f"{name.lower()}://{posixpath.normpath('/' + rest).lstrip('/')}"


def same_path(a: str, b: str) -> bool:
    """Whether `a` and `b` name one file or directory (local: os.path.samefile where both
    exist, so hard links count; else `resolved` spellings)."""
    if not is_remote(a) and not is_remote(b) and os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return resolved(a) == resolved(b)


def is_inside(path: str, directory: str) -> bool:
    """Whether `path` is `directory` or under it (both `resolved`; a URL is never inside a
    local directory, nor the reverse)."""
    if is_remote(path) != is_remote(directory):
        return False
    path, directory = resolved(path), resolved(directory)
    separator = "/" if is_remote(path) else os.sep
    return path == directory or path.startswith(directory.rstrip(separator) + separator)


def check_path(path: str, flag: str) -> None:
    """Refuses a URL that lost a slash (`check_not_mangled`) and a scheme no TensorFlow file
    system serves."""
    check_not_mangled(path, flag)
    if is_remote(path):
        def probe():
            with _as_oserror(path, flag):
                return _gfile().exists(path)

        _bounded(probe, flag, path)


def check_not_mangled(path: str, flag: str) -> None:
    """Refuses a URL that lost a slash (`gs:/b/x`, as os.path.normpath makes it), which as a
    local path would make a folder named `gs:` (for any file layer: this one, or Beam's)."""
    if not is_remote(path) and _MANGLED_URL.match(os.fspath(path)):
        scheme_name = _MANGLED_URL.match(path).group(1)
        raise OutputError(f"{flag}={path} looks like a {scheme_name}:// URL with a slash "
                          f"missing; write {scheme_name}://{path.split(':', 1)[1].lstrip('/')}")


# ---------------------------------------------------------------------------------------------
# Files and directories
# ---------------------------------------------------------------------------------------------

def _gfile():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only for URLs)
    return tf.io.gfile


@contextlib.contextmanager
def _as_oserror(path: str, flag: Optional[str] = None) -> Iterator[None]:
    """Turns tf.errors of the block into OSErrors naming `path` (NoFileSystemError for a
    scheme without a file system)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    try:
        yield
    except tf.errors.UnimplementedError as error:
        raise no_file_system(path, flag) from error
    except tf.errors.OpError as error:
        raise _oserror(error, path) from error


_ERRNO = {"NotFoundError": (FileNotFoundError, errno.ENOENT),
          "AlreadyExistsError": (FileExistsError, errno.EEXIST),
          "PermissionDeniedError": (PermissionError, errno.EACCES),
          "UnauthenticatedError": (PermissionError, errno.EACCES),
          "FailedPreconditionError": (OSError, errno.EIO)}


def _oserror(error: Exception, path: str) -> OSError:
    kind, code = _ERRNO.get(type(error).__name__, (OSError, errno.EIO))
    cause = " ".join(str(getattr(error, "message", error)).split()) or os.strerror(code)
    return kind(code, cause, path)


def no_file_system(path: str, flag: Optional[str] = None) -> NoFileSystemError:
    """The one line for a URL whose scheme TensorFlow has no file system for."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    name, where = scheme(path), f"{flag}={path}" if flag else path
    known = ", ".join(f"{s}://" for s in sorted(tf.io.gfile.get_registered_schemes())
                      if s and s != "file")
    if name in _TENSORFLOW_IO_SCHEMES:
        how = (f"{name}:// comes from the tensorflow-io package, which has no release for "
               f"TensorFlow {tf.__version__} (its newest, 0.37.1, is built for TensorFlow "
               "2.16); copy the files to a local path or one of those stores")
    else:
        how = "use a local path or one of those stores"
    return NoFileSystemError(f"{where}: TensorFlow {tf.__version__} has no file system for "
                             f"{name}:// (it has {known}); {how}")


class _GFileIO(io.RawIOBase):
    """A tf.io.gfile.GFile as a raw binary stream, for io's buffers and text wrapper."""

    def __init__(self, gfile, path: str, reading: bool):
        super().__init__()
        self._file, self._path, self._reading = gfile, path, reading

    def readable(self) -> bool:
        return self._reading

    def writable(self) -> bool:
        return not self._reading

    def readinto(self, buffer) -> int:
        with _as_oserror(self._path):
            data = self._file.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def write(self, data) -> int:
        with _as_oserror(self._path):
            self._file.write(bytes(data))
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                with _as_oserror(self._path):
                    self._file.close()
            finally:
                super().close()


def open(path: str, mode: str = "r", *, encoding: Optional[str] = None,  # pylint: disable=redefined-builtin
         errors: Optional[str] = None, newline: Optional[str] = None) -> IO:
    """builtins.open for a local path; for a URL, a stream over tf.io.gfile with the same
    text semantics (encoding, errors, newline; UTF-8 unless told). Modes: r, w, a, x, each
    with b. Opening for writing creates the parent directories (on either). On a URL, `x`
    checks and then writes (not atomic), and `a` rewrites the object on `gs://`."""
    kind = mode.replace("b", "").replace("t", "")
    if kind not in ("r", "w", "a", "x"):
        raise ValueError(f"unsupported mode {mode!r} for {path}")
    if not is_remote(path):
        if kind != "r":
            os.makedirs(dirname(path), exist_ok=True)
        return io.open(path, mode, encoding=encoding, errors=errors, newline=newline)
    if kind == "x":
        if exists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        kind = "w"
    if kind != "r":
        makedirs(dirname(path))
    with _as_oserror(path):
        gfile = _gfile().GFile(path, kind + "b")
        if kind == "r":
            gfile.size()  # a missing file fails here, as builtins.open does
    raw = _GFileIO(gfile, path, reading=kind == "r")
    buffered = io.BufferedReader(raw) if kind == "r" else io.BufferedWriter(raw)
    if "b" in mode:
        return buffered
    return io.TextIOWrapper(buffered, encoding=encoding or "utf-8", errors=errors,
                            newline=newline)


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.lexists(path)
    with _as_oserror(path):
        return _gfile().exists(path)


def isdir(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(path)
    with _as_oserror(path):
        return _gfile().isdir(path)


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    return exists(path) and not isdir(path)


def stat(path: str) -> Tuple[int, int]:
    """(size in bytes, modification time in ns) of file `path`, local or a URL."""
    if not is_remote(path):
        result = os.stat(path)
        return result.st_size, result.st_mtime_ns
    with _as_oserror(path):
        result = _gfile().stat(path)
    return result.length, result.mtime_nsec


def getsize(path: str) -> int:
    """The size of file `path` in bytes."""
    if not is_remote(path):
        return os.path.getsize(path)
    with _as_oserror(path):
        return _gfile().stat(path).length


def listdir(path: str) -> List[str]:
    """The names in directory `path` (a URL's without the trailing `/` of subdirectories)."""
    if not is_remote(path):
        return os.listdir(path)
    with _as_oserror(path):
        return [name.rstrip("/") for name in _gfile().listdir(path)]


def glob(pattern: str) -> List[str]:
    """The paths matching `pattern`, sorted (`*`, `?`, `[...]` within one path part)."""
    if not is_remote(pattern):
        import glob as glob_lib  # pylint: disable=g-import-not-at-top
        return sorted(glob_lib.glob(pattern))
    with _as_oserror(pattern):
        return sorted(_gfile().glob(pattern))


def makedirs(path: str) -> None:
    """Creates directory `path` and its parents where missing."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
        return
    with _as_oserror(path):
        _gfile().makedirs(path)


def remove(path: str) -> None:
    if not is_remote(path):
        os.remove(path)
        return
    with _as_oserror(path):
        _gfile().remove(path)


def rmtree(path: str, *, ignore_errors: bool = False) -> None:
    """Removes directory `path` and all under it."""
    try:
        if not is_remote(path):
            shutil.rmtree(path)
        elif exists(path):
            with _as_oserror(path):
                _gfile().rmtree(path)
        else:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    except OSError:
        if not ignore_errors:
            raise


def copy(source: str, destination: str, *, overwrite: bool = False) -> None:
    """Copies file `source` to `destination` (either local or a URL), creating the
    destination's parent directories."""
    makedirs(dirname(destination))
    if not is_remote(source) and not is_remote(destination):
        if not overwrite and os.path.lexists(destination):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), destination)
        shutil.copyfile(source, destination)
        return
    with _as_oserror(destination if is_remote(destination) else source):
        _gfile().copy(source, destination, overwrite=overwrite)


def rename(source: str, destination: str, *, overwrite: bool = False) -> None:
    """Renames file `source` to `destination` on one store (atomic for local files; on
    `gs://` a server-side copy, whose object appears whole, and a delete)."""
    if not is_remote(source):
        if overwrite:
            os.replace(source, destination)
        else:
            if os.path.lexists(destination):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), destination)
            os.rename(source, destination)
        return
    with _as_oserror(destination):
        _gfile().rename(source, destination, overwrite=overwrite)


def _files_under(directory: str) -> List[str]:
    """The relative paths of the files under local `directory`, sorted."""
    return sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, _, names in os.walk(directory) for name in names)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local path with `path`'s contents, for a library that reads only local files:
    `path` itself when local, else a temporary copy (removed after the block)."""
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="bert_tf2-read-") as scratch:
        local = os.path.join(scratch, basename(path))
        copy(path, local)
        yield local


@contextlib.contextmanager
def local_output(path: str) -> Iterator[str]:
    """A local file path for a library that writes only local files (matplotlib); what it
    holds after the block replaces `path` atomically (`atomic_file`'s guarantee). On an
    error nothing is written."""
    with tempfile.TemporaryDirectory(prefix="bert_tf2-write-") as scratch:
        local = os.path.join(scratch, basename(path))
        yield local
        _replace_with(local, path)


def _replace_with(local: str, path: str) -> None:
    """Replaces `path` with local file `local` through a hidden sibling, so a reader sees
    the old file or the new one."""
    sibling = join(dirname(path), f".{basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        with _naming(path):
            if is_remote(path):
                copy(local, sibling)
            else:
                os.makedirs(dirname(path), exist_ok=True)
                shutil.copyfile(local, sibling)
            rename(sibling, path, overwrite=True)
    except BaseException:
        with contextlib.suppress(OSError):
            remove(sibling)
        raise


# ---------------------------------------------------------------------------------------------
# Checks before the work
# ---------------------------------------------------------------------------------------------

def check_writable_dir(path: str, flag: str) -> None:
    """Proves directory `path` writable (or creatable), creating nothing, or raises an
    OutputError naming `flag`: for a URL, a store that answers and takes a probe file."""
    check_path(path, flag)
    if is_remote(path):
        _probe_store(path, flag)
        return
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
    check_path(path, flag)
    if is_remote(path):
        _probe_store(dirname(path), flag, path)
    if isdir(path):
        raise OutputError(f"{flag}={path} is a directory; name a file")
    if not overwrite and exists(path):
        raise OutputError(f"{flag}={path} already exists; pass --overwrite to replace it, or "
                          "choose another file")
    if is_remote(path):
        return
    directory = dirname(path)
    try:
        _probe(directory)
    except OSError as error:
        raise OutputError(f"{flag}={path} cannot be written: {directory} is not a writable "
                          f"directory ({error.strerror or error})") from error


def _probe(directory: str) -> None:
    """Raises OSError unless local `directory` is, or can be made, a writable directory.

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


def _probe_store(directory: str, flag: str, named: Optional[str] = None) -> None:
    """Writes and removes a probe file in URL `directory` (creating no directory), or raises
    one line naming the URL (`named`, else `directory`) and the cause."""
    def attempt():
        gfile = _gfile()
        probe = join(directory, f".write-probe-{uuid.uuid4().hex}")
        with _as_oserror(directory, flag):
            if gfile.exists(directory) and not gfile.isdir(directory):
                raise NotADirectoryError(errno.ENOTDIR, "a file, not a directory", directory)
            with gfile.GFile(probe, "wb") as f:
                f.write(b"")
            gfile.remove(probe)

    _bounded(attempt, flag, named or directory)


def _bounded(attempt, flag: str, path: str):
    """`attempt()`'s result, its OSError as one line naming `flag`=`path` and the cause; a
    store that has not answered within STORE_PROBE_SECONDS is reported as unreachable (the
    attempt goes on in a daemon thread, which does not keep the process alive)."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = attempt()
        except BaseException as error:  # pylint: disable=broad-except  (re-raised below)
            outcome["error"] = error

    thread = threading.Thread(target=run, name="store-probe", daemon=True)
    thread.start()
    thread.join(STORE_PROBE_SECONDS)
    if thread.is_alive():
        raise UnreachableStoreError(
            f"{flag}={path}: {scheme(path)}:// did not answer within "
            f"{STORE_PROBE_SECONDS:.0f} s (TensorFlow keeps retrying); check the network, the "
            "credentials and the bucket name")
    error = outcome.get("error")
    if isinstance(error, OSError):
        raise UnreachableStoreError(f"{flag}={path}: {error.strerror or error}") from error
    if error is not None:
        raise error
    return outcome.get("value")


# ---------------------------------------------------------------------------------------------
# Atomic outputs
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def scratch_directory(parent: str, name: str) -> Iterator[str]:
    """Yields a new local directory for a directory `name` to be published into `parent`
    (`publish_directory`), removed when the block ends.

    Under a local `parent` it is the hidden `parent/.NAME.tmp-*` (same filesystem, so the
    publishing rename is atomic); for a URL `parent` a local temporary directory, copied up
    by the publishing.
    """
    if is_remote(parent):
        scratch = tempfile.mkdtemp(prefix=f"bert_tf2-{name}-")
    else:
        os.makedirs(parent, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def publish_directory(scratch: str, final_path: str) -> str:
    """Makes the finished local directory `scratch` appear as `final_path`, or raises
    FileExistsError if something is there; returns `final_path`.

    Local: one rename (same filesystem: atomic). A URL: a copy, file by file, with
    saved_model.pb last (`_upload_tree`).
    """
    if is_remote(final_path):
        if exists(final_path):
            raise FileExistsError(f"{final_path} already exists; refusing to overwrite it")
        _upload_tree(scratch, final_path)
        return final_path
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


def _upload_tree(local_dir: str, url: str) -> None:
    """Copies local directory `local_dir` to `url`, its SavedModel roots (saved_model.pb)
    last: a loader that finds the version while it is being copied fails to load it (TF
    Serving retries) instead of loading part of it. A failed copy removes what it wrote."""
    files = _files_under(local_dir)
    ordered = ([f for f in files if f not in _SAVED_MODEL_ROOTS]
               + [f for f in files if f in _SAVED_MODEL_ROOTS])
    try:
        makedirs(url)
        for root, _, _ in os.walk(local_dir):
            makedirs(join(url, *_parts(os.path.relpath(root, local_dir))))
        for relative in ordered:
            copy(os.path.join(local_dir, relative), join(url, *_parts(relative)))
    except BaseException:
        rmtree(url, ignore_errors=True)
        raise


def _parts(relative: str) -> List[str]:
    return [part for part in relative.split(os.sep) if part not in ("", ".")]


def publish_next_version(scratch: str, export_dir: str) -> str:
    """Publishes the finished directory `scratch` as `export_dir/<version>`, the version one
    more than the highest there; returns that path.

    Locally the version is claimed by the rename itself, so exports running at the same time
    into one `export_dir` each get their own: one that finds its number taken tries the next.
    A store without atomic rename has no such claim (docs/serving.md).
    """
    version = (existing_versions(export_dir) or [0])[-1] + 1
    while True:
        try:
            return publish_directory(scratch, join(export_dir, str(version)))
        except FileExistsError:
            version += 1


def unpublish_directory(path: str) -> None:
    """Removes the published directory `path` so that no reader sees a loadable half of it.

    Local: first renamed to a hidden name (atomic; TF Serving looks only at numeric names),
    then deleted. A URL: its SavedModel roots (saved_model.pb) first, then the rest. A
    directory that is already gone (another process removed it) is no error.
    """
    if is_remote(path):
        for name in _SAVED_MODEL_ROOTS:
            with contextlib.suppress(FileNotFoundError):
                remove(join(path, name))
        rmtree(path, ignore_errors=True)
        return
    doomed = tempfile.mkdtemp(prefix=f".{basename(path)}.deleting-", dir=dirname(path))
    try:
        os.rename(path, os.path.join(doomed, basename(path)))
    except FileNotFoundError:
        pass
    shutil.rmtree(doomed, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(final_path: str) -> Iterator[str]:
    """Yields a scratch directory that becomes `final_path` only if the block succeeds.

    Readers such as TF Serving, which polls the export directory, see either no directory or
    a complete one, never a half-written one (on a store without directory rename: one that
    does not load until it is complete, `publish_directory`). On any error the scratch
    directory is removed. An existing `final_path` is never overwritten.
    """
    final_path = abspath(final_path)
    if exists(final_path):
        raise FileExistsError(f"{final_path} already exists; refusing to overwrite it")
    with scratch_directory(dirname(final_path), basename(final_path)) as scratch:
        yield scratch
        publish_directory(scratch, final_path)


@contextlib.contextmanager
def atomic_file(path: str, *, errors: str = "strict", newline: Optional[str] = None
                ) -> Iterator[TextIO]:
    """Yields a UTF-8 text file that replaces `path` only if the block succeeds.

    It is a hidden sibling of `path`, renamed onto it at the end, so a reader (or a server
    polling the file) sees the old file or the new one, never half of one (on `gs://` the
    rename is a server-side copy, whose object appears whole). On any error it is removed
    and `path` is left as it was. A path that cannot be written raises an OutputError
    naming `path`.
    """
    if is_remote(path):
        with local_output(path) as local:
            with io.open(local, "x", encoding="utf-8", errors=errors, newline=newline) as f:
                yield f
        return
    directory = dirname(path)
    # Not tempfile.mkstemp: its 0600 mode would stick to the output; "x" honours the umask.
    scratch = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        with _naming(path):
            os.makedirs(directory, exist_ok=True)
            f = io.open(scratch, "x", encoding="utf-8", errors=errors, newline=newline)
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
    if not isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def existing_versions(export_dir: str) -> List[int]:
    """The numeric version directories under `export_dir` (what TF Serving serves), ascending."""
    if not isdir(export_dir):
        return []
    return sorted(int(name) for name in listdir(export_dir)
                  if re.fullmatch(r"\d+", name) and isdir(join(export_dir, name)))
