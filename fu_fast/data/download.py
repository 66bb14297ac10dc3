"""Fetching CIFAR-10: `fu-fast data cifar10 DIR`, and `--download` of `fu-fast train` and `analyze`.

Nothing else in fu_fast downloads, and this only when asked. The archive is torchvision's
(CIFAR10.url, the official cifar-10-python.tar.gz) fetched with torchvision's downloader, which
checks its md5; an archive already lying in DIR (a manual download) is used instead, after the
same md5 check. Only the regular files cifar-10-batches-py/{data_batch_1..5, test_batch,
batches.meta, readme.html} are taken from it (no other path, no link, nothing outside DIR);
each batch must have torchvision's md5 and pass the loader's own check (cifar10._read: the
restricted unpickler and the format). All of it happens in a hidden folder inside DIR, and the
verified cifar-10-batches-py is renamed into place at the end: an interrupted or failed fetch
never leaves a folder that looks complete, and a failure removes what it made.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from ..errors import FuFastError
from . import cifar10
from ._common import one_line

TIMEOUT_S = 60                      # a network that never answers ends in the same one line
EXTRA_FILES = ("batches.meta", "readme.html")
PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"


def official() -> dict:
    """The archive's URL, file name and md5, and each batch's md5, as torchvision keeps them."""
    from torchvision.datasets import CIFAR10

    return {"url": CIFAR10.url, "archive": CIFAR10.filename, "md5": CIFAR10.tgz_md5,
            "files": dict(CIFAR10.train_list + CIFAR10.test_list)}


def manual_steps(root: Path) -> str:
    """Where to get the archive and where its files must go, for when the fetch cannot run."""
    source = official()
    return (f"get {source['url']} (see {PAGE}) and extract it in {root}, so that {root / cifar10.FOLDER} holds "
            f"data_batch_1..5 and test_batch (or put the archive in {root} and run `fu-fast data cifar10 {root}`)")


def present(data_dir) -> bool:
    """Whether the loader finds every batch file in ``data_dir`` (it checks names, not contents)."""
    try:
        cifar10.find(data_dir)
    except FuFastError:
        return False
    return True


def fetch(data_dir) -> dict:
    """CIFAR-10 into ``data_dir``/cifar-10-batches-py, verified; a complete folder already there is
    verified and kept. Returns {"folder", "train", "test" (image counts), "downloaded"}."""
    root = Path(data_dir).expanduser()
    existing = root / cifar10.FOLDER if (root / cifar10.FOLDER).exists() else None
    if existing is None and present(root):
        existing = root                  # DIR is itself a batch folder
    if existing is not None:
        try:
            return {**verify(cifar10.find(root), official()["files"]), "downloaded": False}
        except FuFastError as e:
            raise FuFastError(f"{e}; remove {existing} (or fix it) and run again: nothing was downloaded") from None
    made = _make_dirs(root)
    work = None
    try:
        try:
            work = Path(tempfile.mkdtemp(dir=root, prefix=".cifar10-download."))
        except OSError as e:
            raise FuFastError(f"cannot write into {root}: {e.strerror or e}") from None
        archive, downloaded = _archive(root, work)
        extracted = work / cifar10.FOLDER
        _extract(archive, extracted)
        counts = verify(extracted, official()["files"], archive=archive)
        os.replace(extracted, root / cifar10.FOLDER)   # same file system: appears complete or not at all
    except BaseException:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
            work = None
        for folder in reversed(made):     # the folders this call created, deepest first
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return {**counts, "folder": root / cifar10.FOLDER, "downloaded": downloaded}


def _make_dirs(root: Path) -> list:
    """Create ``root`` and its missing parents; the folders created, outermost first."""
    if root.exists() and not root.is_dir():
        raise FuFastError(f"cannot write into {root}: it exists and is not a directory")
    missing = []
    for folder in [root, *root.parents]:
        if folder.exists():
            break
        missing.append(folder)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FuFastError(f"cannot write into {root}: {e.strerror or e}") from None
    return list(reversed(missing))


def _archive(root: Path, work: Path) -> tuple[Path, bool]:
    """(the archive, whether it was downloaded): the one in ``root`` if there is one, else fetched into ``work``."""
    from torchvision.datasets import utils

    source = official()
    local = root / source["archive"]
    if local.is_file():
        if _md5(local) != source["md5"]:
            raise FuFastError(f"{local} is not the official CIFAR-10 archive (its md5 is not {source['md5']}); "
                              f"remove it and run again to download it")
        return local, False
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TIMEOUT_S)
    try:
        utils.download_url(source["url"], str(work), filename=source["archive"], md5=source["md5"])
    except RuntimeError as e:    # torchvision's md5 check: "File not found or corrupted."
        raise FuFastError(f"the CIFAR-10 download from {source['url']} is incomplete or corrupted ({one_line(e)}); "
                          f"run again, or {manual_steps(root)}") from None
    except Exception as e:       # URLError, HTTPError, timeouts, resets: no usable network
        raise FuFastError(f"cannot download CIFAR-10 ({one_line(e)}): {manual_steps(root)}") from None
    finally:
        socket.setdefaulttimeout(previous)
    archive = work / source["archive"]
    if not archive.is_file():
        raise FuFastError(f"the CIFAR-10 download wrote no {archive.name}: {manual_steps(root)}")
    return archive, True


def _extract(archive: Path, into: Path) -> None:
    """The archive's batch files (regular files named cifar-10-batches-py/NAME, NAME a known file) into ``into``."""
    wanted = set(cifar10.TRAIN_FILES) | {cifar10.TEST_FILE} | set(EXTRA_FILES)
    into.mkdir()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if len(parts) == 2 and parts[0] == cifar10.FOLDER and parts[1] in wanted and member.isfile():
                    source = tar.extractfile(member)
                    with source, open(into / parts[1], "wb") as target:
                        shutil.copyfileobj(source, target)
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:   # gzip, zlib and tar damage
        raise FuFastError(f"{archive.name} is not a readable CIFAR-10 archive ({one_line(e)}); remove it "
                          f"if it is yours, and run again") from None
    missing = [f for f in cifar10.TRAIN_FILES + [cifar10.TEST_FILE] if not (into / f).is_file()]
    if missing:
        raise FuFastError(f"{archive.name} holds no {cifar10.FOLDER}/{', '.join(missing)}: it is not the CIFAR-10 "
                          f"python archive")


def verify(folder: Path, md5s: dict, *, archive: Path | None = None) -> dict:
    """Each batch in ``folder`` has its md5 (where ``md5s`` knows it) and passes the loader's check;
    {"folder", "train", "test"} with the number of images."""
    counts = {"train": 0, "test": 0}
    where = f" (from {archive.name})" if archive is not None else ""
    for name in cifar10.TRAIN_FILES + [cifar10.TEST_FILE]:
        path = folder / name
        if name in md5s and _md5(path) != md5s[name]:
            raise FuFastError(f"cifar10: {path.name}{where} is not the official batch (its md5 is not {md5s[name]})")
        images, _ = cifar10._read(path)
        counts["test" if name == cifar10.TEST_FILE else "train"] += len(images)
    return {"folder": folder, **counts}


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
