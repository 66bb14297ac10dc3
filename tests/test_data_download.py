"""Fetching CIFAR-10 (`fu-fast data cifar10 DIR`, `--download`): torchvision's downloader replaced by
one that writes a small archive in the official format, or fails as a machine without a network does."""

import hashlib
import io
import socket
import tarfile
import urllib.error

import pytest
import torchvision.datasets
import torchvision.datasets.utils
from typer.testing import CliRunner

from fu_fast import FuFastError, data
from fu_fast.cli.app import app
from fu_fast.data import download

from conftest import one_error_line, write_cifar10

runner = CliRunner()
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def md5(content: bytes) -> str:
    return hashlib.md5(content).hexdigest()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """(bytes of a small cifar-10-python.tar.gz laid out as the official one, {batch: (pixels, labels)},
    {batch: md5}): 20 images per batch under the top folder cifar-10-batches-py."""
    source = tmp_path_factory.mktemp("source")
    written = write_cifar10(source, per_batch=20)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    folder = source / "cifar-10-batches-py"
    md5s = {name: md5((folder / name).read_bytes()) for name in written}
    return buffer.getvalue(), written, md5s


def serve(monkeypatch, content: bytes, *, md5s=None):
    """torchvision's download_url writes ``content``, checking its md5 as the real one does; torchvision's
    md5s of the archive and of each batch become those of ``content`` (or ``md5s`` for the batches).
    Returns the list of (url, root) calls."""
    calls = []

    def fake_download_url(url, root, filename=None, md5=None, max_redirect_hops=3):
        calls.append((url, root))
        path = f"{root}/{filename}"
        with open(path, "wb") as f:
            f.write(content)
        if md5 is not None and hashlib.md5(content).hexdigest() != md5:
            raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", fake_download_url)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "tgz_md5", md5(content))
    if md5s is not None:
        monkeypatch.setattr(torchvision.datasets.CIFAR10, "train_list",
                            [[f"data_batch_{k}", md5s[f"data_batch_{k}"]] for k in range(1, 6)])
        monkeypatch.setattr(torchvision.datasets.CIFAR10, "test_list", [["test_batch", md5s["test_batch"]]])
    return calls


def no_network(monkeypatch, error=None):
    def unreachable(*args, **kwargs):
        raise error or urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", unreachable)


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else None


# ---------------------------------------------------------------- fu-fast data cifar10 DIR

def test_downloads_verifies_and_the_data_set_loads(tmp_path, monkeypatch, archive):
    content, written, md5s = archive
    calls = serve(monkeypatch, content, md5s=md5s)
    target = tmp_path / "data"
    result = invoke("data", "cifar10", target)
    assert result.exit_code == 0, result.output
    assert calls == [(URL, calls[0][1])]
    assert f"{target / 'cifar-10-batches-py'}" in result.stdout and "100 training and 20 test images" in result.stdout
    # Only the batch folder is left: the archive and the work folder are gone.
    assert files_under(target) == ["cifar-10-batches-py"] + [
        f"cifar-10-batches-py/{name}" for name in sorted(["batches.meta", *written])]
    test = data.load("cifar10", "test", data_dir=target)
    assert test.targets == written["test_batch"][1]
    assert len(data.load("cifar10", "train", data_dir=target)) == 90
    # Run again: the folder is there, verified, and nothing is downloaded.
    no_network(monkeypatch)
    again = invoke("data", "cifar10", target)
    assert again.exit_code == 0 and "verified" in again.stdout and "downloaded" not in again.stdout


def test_without_a_network_one_line_says_where_to_get_it_and_put_it(tmp_path, monkeypatch):
    no_network(monkeypatch)
    target = tmp_path / "new" / "data"
    line = one_error_line(invoke("data", "cifar10", target), "cannot download CIFAR-10", URL,
                          f"{target / 'cifar-10-batches-py'} holds data_batch_1..5 and test_batch")
    assert "URLError" in line
    assert not (tmp_path / "new").exists()           # the folders it made are gone again
    existing = tmp_path / "existing"
    existing.mkdir()
    no_network(monkeypatch, TimeoutError("timed out"))
    one_error_line(invoke("data", "cifar10", existing), "cannot download CIFAR-10 (TimeoutError: timed out)")
    assert files_under(existing) == []               # no work folder, no partial archive
    assert socket.getdefaulttimeout() is None        # the download's timeout is not left behind


def test_an_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    no_network(monkeypatch, KeyboardInterrupt())
    target = tmp_path / "data"
    result = invoke("data", "cifar10", target)
    assert result.exit_code == 130 and not target.exists()


@pytest.mark.parametrize("content, fragment", [
    (b"this is not a tar.gz archive", "is not a readable CIFAR-10 archive"),
    (b"\x1f\x8b\x08\x00" + b"\x00" * 40, "is not a readable CIFAR-10 archive"),    # gzip header, then garbage
])
def test_a_corrupt_archive_is_one_line(tmp_path, monkeypatch, content, fragment):
    serve(monkeypatch, content)
    one_error_line(invoke("data", "cifar10", tmp_path), fragment)
    assert files_under(tmp_path) == []


def test_a_truncated_archive_is_one_line(tmp_path, monkeypatch, archive):
    content, _, md5s = archive
    serve(monkeypatch, content[: len(content) // 2], md5s=md5s)
    one_error_line(invoke("data", "cifar10", tmp_path), "cifar-10-python.tar.gz")
    assert files_under(tmp_path) == []


def test_a_download_that_fails_torchvisions_md5_is_one_line(tmp_path, monkeypatch, archive):
    content, _, md5s = archive
    serve(monkeypatch, content, md5s=md5s)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "tgz_md5", "0" * 32)
    one_error_line(invoke("data", "cifar10", tmp_path), "incomplete or corrupted", "File not found or corrupted")
    assert files_under(tmp_path) == []


def test_batches_must_have_torchvisions_md5s(tmp_path, monkeypatch, archive):
    """The small archive passes the loader's check, but its batches are not the official release."""
    content, _, _ = archive
    serve(monkeypatch, content)   # torchvision's own batch md5s
    one_error_line(invoke("data", "cifar10", tmp_path), "data_batch_1 (from cifar-10-python.tar.gz) is not the "
                                                        "official batch", "c99cafc152244af753f735de768cd75f")
    assert files_under(tmp_path) == []


def test_an_archive_of_something_else_is_one_line(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        payload = b"not a pickle"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    serve(monkeypatch, buffer.getvalue())
    one_error_line(invoke("data", "cifar10", tmp_path), "holds no cifar-10-batches-py/data_batch_2")
    assert files_under(tmp_path) == []


def test_only_the_batch_files_are_taken_from_the_archive(tmp_path, monkeypatch, archive):
    """Members outside cifar-10-batches-py/, with '..', or links are never written."""
    content, written, md5s = archive
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as original:
        members = [(m, original.extractfile(m).read() if m.isfile() else None) for m in original]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member, payload in members:
            tar.addfile(member, io.BytesIO(payload) if payload is not None else None)
        for name in ("../escaped", "cifar-10-batches-py/../../escaped2", "elsewhere/data_batch_1"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        link = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    serve(monkeypatch, buffer.getvalue(), md5s=md5s)
    target = tmp_path / "inside" / "data"
    assert invoke("data", "cifar10", target).exit_code == 0
    assert files_under(tmp_path / "inside") == ["data", "data/cifar-10-batches-py"] + [
        f"data/cifar-10-batches-py/{name}" for name in sorted(["batches.meta", *written])]
    assert not list(tmp_path.glob("escaped*"))


def test_an_archive_put_in_dir_by_hand_is_used(tmp_path, monkeypatch, archive):
    content, _, md5s = archive
    serve(monkeypatch, content, md5s=md5s)
    no_network(monkeypatch)                    # it must not be needed
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(content)
    result = invoke("data", "cifar10", tmp_path)
    assert result.exit_code == 0, result.output
    assert len(data.load("cifar10", "test", data_dir=tmp_path)) == 20
    assert (tmp_path / "cifar-10-python.tar.gz").exists()     # the user's file stays
    other = tmp_path / "other"
    other.mkdir()
    (other / "cifar-10-python.tar.gz").write_bytes(content + b"x")
    one_error_line(invoke("data", "cifar10", other), "is not the official CIFAR-10 archive")


def test_a_partial_folder_is_never_overwritten(tmp_path, monkeypatch, archive):
    content, _, md5s = archive
    calls = serve(monkeypatch, content, md5s=md5s)
    write_cifar10(tmp_path, per_batch=5)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    one_error_line(invoke("data", "cifar10", tmp_path), "lacks test_batch", "remove", "nothing was downloaded")
    assert not calls and not (tmp_path / "cifar-10-batches-py" / "test_batch").exists()


@pytest.mark.parametrize("line, fragments", [
    (("data", "mnist", "DIR"), ["unknown data set 'mnist'"]),
    (("data", "imagenet", "DIR"), ["image-net.org"]),
    (("data", "synthetic"), ["generated"]),
    (("data", "cifar10"), ["fu-fast data cifar10 DIR"]),
    (("data", "cifar10", "FILE"), ["exists and is not a directory"]),
])
def test_bad_data_command_lines(tmp_path, monkeypatch, line, fragments):
    no_network(monkeypatch)
    (tmp_path / "FILE").write_text("a file")
    one_error_line(invoke(*[tmp_path / word if word in ("DIR", "FILE") else word for word in line]), *fragments)


# ---------------------------------------------------------------- --download of train and analyze

def test_missing_data_is_never_downloaded_without_the_flag(tmp_path, monkeypatch, archive):
    calls = serve(monkeypatch, *archive[:1], md5s=archive[2])
    line = one_error_line(invoke("analyze", "--model", "alexnet", "--width", "0.25", "--data", "cifar10",
                                 "--data-dir", tmp_path / "none", "--limit", "8", "-q"), "no cifar-10-batches-py")
    assert "fu-fast data cifar10 DIR" in line and "--download" in line
    assert not calls and not (tmp_path / "none").exists()


def test_analyze_and_train_download_when_asked(tmp_path, monkeypatch, archive):
    content, _, md5s = archive
    calls = serve(monkeypatch, content, md5s=md5s)
    target = tmp_path / "data"
    result = invoke("analyze", "--model", "alexnet", "--width", "0.25", "--data", "cifar10", "--data-dir", target,
                    "--download", "--limit", "8", "--repeats", "1", "-q", "--out", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and (tmp_path / "r.json").exists()
    result = invoke("train", "--model", "alexnet", "--width", "0.25", "--data-dir", target, "--download",
                    "--epochs", "1", "--out", tmp_path / "run", "-q")
    assert result.exit_code == 0, result.output
    assert len(calls) == 1                     # already there: not fetched again


@pytest.mark.parametrize("line, fragment", [
    (("train", "--model", "mlp", "--download", "--out", "NEW"), "--download fetches cifar10 only"),
    (("train", "--model", "alexnet", "--download", "--out", "NEW"), "--download needs --data-dir DIR"),
    (("analyze", "--model", "mlp", "--data", "digits", "--download"), "--download fetches cifar10 only"),
])
def test_download_flag_misuse_is_one_line(tmp_path, monkeypatch, line, fragment):
    no_network(monkeypatch)
    one_error_line(invoke(*[tmp_path / "new" if word == "NEW" else word for word in line]), fragment)
    assert not (tmp_path / "new").exists()


def test_fetch_refuses_a_non_official_complete_folder(tmp_path, monkeypatch):
    no_network(monkeypatch)
    write_cifar10(tmp_path, per_batch=5)
    with pytest.raises(FuFastError, match="is not the official batch.*remove"):
        download.fetch(tmp_path)
