"""Atomic file writing: a result or checkpoint is either complete or absent, never half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import FuFastError


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` only when the ``with`` block ends without error.

    It is written beside its destination (same file system) and moved into place with
    os.replace, which is atomic on POSIX and Windows; an error removes the temporary file.
    """
    path = Path(path)
    if path.is_dir():
        raise FuFastError(f"cannot write {path}: it is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise FuFastError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def check_writable_file(path: str | os.PathLike) -> None:
    """Raise FuFastError unless a file can be written at ``path`` (its folder created as needed):
    checked before long work starts, so that work never ends in a write error."""
    path = Path(path)
    if path.is_dir():
        raise FuFastError(f"cannot write {path}: it is a directory; give a file name")
    _check_can_create_in(path.parent, path)


def check_writable_dir(path: str | os.PathLike) -> None:
    """Raise FuFastError unless ``path`` is, or can be created as, a directory to write files in."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FuFastError(f"cannot write into {path}: it exists and is not a directory")
    _check_can_create_in(path, path)


def _check_can_create_in(folder: Path, target: Path) -> None:
    """Create (and remove) a file in ``folder`` or, when it does not exist yet, in its nearest
    existing ancestor: the only test of permissions that holds for every user and file system."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise FuFastError(f"cannot write {target}: {existing} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".fu-fast-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FuFastError(f"cannot write {target}: {existing}: {e.strerror or e}") from None


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path) as f:
        f.write(text.encode())
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
