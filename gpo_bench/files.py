"""Files that many processes share: atomic writes under unique temporary names, a per-run-folder lock, the
removal of temporary files a killed process left behind, and the digest that ties result.json to its
predictions.jsonl. An error writing a file names the file."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
TEMP_SUFFIX = ".tmp"


def path_error(error: OSError, path: Path) -> OSError:
    """The same error (same errno and subclass) naming `path` when it names no file itself."""
    if error.filename:
        return error
    return OSError(error.errno, error.strerror or str(error), str(path))


def write_atomic(path: Path, content: str | Callable[[IO[bytes]], None], sync: bool = True) -> None:
    """Write text (or let `content` write bytes) to a uniquely named temporary file beside `path`, then
    rename: readers never see half a file and concurrent writers never share a temporary file. `sync=False`
    skips flushing to disk, for files that can be made again (the web report's)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX)
    except OSError as error:
        raise path_error(error, path) from None
    try:
        with os.fdopen(handle, "wb") as out:
            if isinstance(content, str):
                out.write(content.encode())
            else:
                content(out)
            if sync:
                out.flush()
                os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results are meant to be shared
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise path_error(error, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_digest(path: Path) -> dict:
    """{file, lines, sha256} of a file, read in blocks."""
    digest, lines = hashlib.sha256(), 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            lines += block.count(b"\n")
    return {"file": path.name, "lines": lines, "sha256": digest.hexdigest()}


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold `folder`'s lock (an fcntl lock on `folder/.lock`, released by the kernel when the holder dies);
    while another process holds it, say so and wait. Creating the folder and the lock file first also
    checks, before any work, that the folder can be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = (folder / LOCK_FILE).open("a")
    except OSError as error:
        raise path_error(error, folder) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s is in use by another process; waiting until it is done", folder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_temp_files(folder: Path) -> list[Path]:
    """Remove the temporary files of write_atomic under `folder` (call it holding the folder's lock: then
    every one of them was left by a process that died mid-write)."""
    removed = []
    for path in folder.rglob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    if removed:
        log.warning("removed %d temporary file(s) left by an interrupted run in %s", len(removed), folder)
    return removed
