"""Damaged, foreign and malicious input files: one FuFastError line naming the file, never a
traceback, never code from the file run, never a partial result.

Table-driven: each reader (CIFAR-10 batches, ImageFolder images, model.pt, checkpoint.pt,
run.json) meets every kind of damage -- zero bytes, random bytes, text, JSON, truncation,
malicious pickles, wrong dtypes and shapes, labels out of range, missing or mistyped keys --
through the API, and the commands that read them (analyze, train, compress) through the CLI.
"""

import codecs
import io
import json
import os
import pickle
import random
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from fu_fast import FuFastError, data, models
from fu_fast.cli.app import app
from fu_fast.train import TrainConfig, load_model, read_run, train

from conftest import one_error_line, write_cifar10

runner = CliRunner()
PER_BATCH = 4
MARKER = "pwned"   # a malicious file's payload would create this file in the test's folder


def refused(call, *fragments):
    """``call()`` raises FuFastError: one line, containing every fragment, never advising an unsafe load."""
    with pytest.raises(FuFastError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message, message
    assert "weights_only" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------- damage

class Payload:
    """Pickles as a call of ``function(*args)``: what unpickling such a file would run."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(folder):
    """Ways a pickle can run code, each creating MARKER in ``folder`` when run."""
    marker = str(folder / MARKER)
    return {
        "os.system": Payload(os.system, f"touch '{marker}'"),
        "builtins.exec": Payload(exec, f"open({marker!r}, 'w').close()"),
        "subprocess.call": Payload(subprocess.call, ["touch", marker]),
    }


def random_bytes(n=600):
    return random.Random(0).randbytes(n)


# ---------------------------------------------------------------- CIFAR-10 batches

@pytest.fixture(scope="module")
def cifar_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, per_batch=PER_BATCH)
    return root


def cifar_copy(source, tmp_path):
    root = tmp_path / "cifar"
    shutil.copytree(source, root)
    return root, root / "cifar-10-batches-py" / "test_batch"


def batch_record(pixels=None, labels=None) -> dict:
    """A test_batch dict (bytes keys, as Python 3 writes them), its pixels or labels replaced if given."""
    rng = np.random.default_rng(1)
    return {b"batch_label": "test",
            b"data": rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8) if pixels is None else pixels,
            b"labels": [0, 1, 2, 3] if labels is None else labels,
            b"filenames": [f"{j}.png" for j in range(PER_BATCH)]}


def batch(pixels=None, labels=None) -> bytes:
    return pickle.dumps(batch_record(pixels, labels))


def without(key) -> bytes:
    record = batch_record()
    del record[key]
    return pickle.dumps(record)


ROWS = np.zeros((PER_BATCH, 3072), dtype=np.uint8)
CIFAR_DAMAGE = {
    "zero bytes": (b"", ["not a CIFAR-10 python batch", "EOFError"]),
    "random bytes": (random_bytes(), ["not a CIFAR-10 python batch"]),
    "text": (b"airplane automobile bird\n", ["not a CIFAR-10 python batch"]),
    "json": (json.dumps({"data": [[0] * 3072], "labels": [0]}).encode(), ["not a CIFAR-10 python batch"]),
    "truncated": (batch()[:300], ["not a CIFAR-10 python batch"]),
    "a list": (pickle.dumps([1, 2, 3]), ["holds a list, not a dict"]),
    "no labels": (without(b"labels"), ["no 'labels' entry"]),
    "no data": (without(b"data"), ["no 'data' entry"]),
    "int64 pixels": (batch(ROWS.astype(np.int64) + 300), ["uint8 array of shape (N, 3072), got int64"]),
    "float pixels": (batch(ROWS.astype(np.float32)), ["got float32"]),
    "pixels as a list": (batch(ROWS.tolist()), ["uint8 array", "got list"]),
    "wrong shape": (batch(np.zeros((PER_BATCH, 1024), np.uint8)), ["got uint8 array of shape (4, 1024)"]),
    "label 57": (batch(labels=[0, 57, 2, 3]), ["label 57 of image 1 is outside 0-9"]),
    "label -1": (batch(labels=[0, 1, 2, -1]), ["label -1 of image 3 is outside 0-9"]),
    "float labels": (batch(labels=[0.5, 1, 2, 3]), ["labels must be a list of integers, got float64"]),
    "too few labels": (batch(labels=[0, 1, 2]), ["3 labels for 4 images"]),
}


@pytest.mark.parametrize("content, fragments", CIFAR_DAMAGE.values(), ids=CIFAR_DAMAGE.keys())
def test_damaged_cifar_batch_is_named(cifar_source, tmp_path, content, fragments):
    root, test_batch = cifar_copy(cifar_source, tmp_path)
    test_batch.write_bytes(content)
    refused(lambda: data.load("cifar10", "test", data_dir=root), f"cifar10: {test_batch}", *fragments)


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "subprocess.call", "_codecs.encode(rot13)"])
def test_malicious_cifar_batch_is_refused_before_it_runs(cifar_source, tmp_path, payload):
    """The payload sits after valid pixel data, where a plain pickle.load would call it."""
    root, test_batch = cifar_copy(cifar_source, tmp_path)
    calls = {**payloads(tmp_path), "_codecs.encode(rot13)": Payload(codecs.encode, "abc", "rot13")}
    test_batch.write_bytes(batch(labels=calls[payload]))
    shown = "posix.system" if payload == "os.system" else payload.replace("(rot13)", "(..., 'rot13')")
    refused(lambda: data.load("cifar10", "test", data_dir=root), f"refused to read {test_batch}", shown)
    assert not (tmp_path / MARKER).exists()


def test_malicious_training_batch_is_refused_too(cifar_source, tmp_path):
    root, _ = cifar_copy(cifar_source, tmp_path)
    third = root / "cifar-10-batches-py" / "data_batch_3"
    third.write_bytes(pickle.dumps(payloads(tmp_path)["builtins.exec"]))
    refused(lambda: data.load("cifar10", "train", data_dir=root), str(third), "builtins.exec")
    assert not (tmp_path / MARKER).exists()


def test_real_format_batches_still_load(cifar_source, tmp_path):
    """Bytes keys, latin1 str keys, and numpy scalars as labels (a list(np.array) of them)."""
    root, test_batch = cifar_copy(cifar_source, tmp_path)
    test_batch.write_bytes(batch(labels=list(np.array([9, 0, 3, 3]))))
    assert data.load("cifar10", "test", data_dir=root).targets == [9, 0, 3, 3]
    record = {k.decode(): v for k, v in batch_record().items()}
    test_batch.write_bytes(pickle.dumps(record))
    assert data.load("cifar10", "test", data_dir=root).targets == [0, 1, 2, 3]


# ---------------------------------------------------------------- ImageFolder images

@pytest.fixture(scope="module")
def imagenet_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    for split in ("train", "val"):
        for cls, colour in (("n01", (200, 20, 20)), ("n02", (20, 200, 20))):
            (root / split / cls).mkdir(parents=True)
            for j in range(2):
                Image.new("RGB", (12, 10), colour).save(root / split / cls / f"{cls}_{j}.JPEG", quality=90)
    return root


def imagenet_copy(source, tmp_path):
    root = tmp_path / "imagenet"
    shutil.copytree(source, root)
    return root


def jpeg_bytes():
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 120, 240)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


IMAGE_DAMAGE = {
    "zero bytes": (b"", "an empty file"),
    "random bytes": (random_bytes(), "not an image format PIL reads"),
    "text": (b"not a picture\n", "not an image format PIL reads"),
    "truncated": (jpeg_bytes()[:len(jpeg_bytes()) // 2], "OSError: Truncated File Read"),
    "header only": (jpeg_bytes()[:40], "OSError: Truncated File Read"),
}


@pytest.mark.parametrize("content, reason", IMAGE_DAMAGE.values(), ids=IMAGE_DAMAGE.keys())
def test_damaged_image_is_named(imagenet_source, tmp_path, content, reason):
    root = imagenet_copy(imagenet_source, tmp_path)
    damaged = root / "val" / "n02" / "n02_1.JPEG"
    damaged.write_bytes(content)
    val = data.load("imagenet", "val", data_dir=root, image_size=8)
    refused(lambda: [val[i] for i in range(len(val))], f"cannot read image {damaged}", reason,
            "replace or delete it")


def test_damaged_image_read_by_a_worker_process_is_still_one_line(imagenet_source, tmp_path):
    root = imagenet_copy(imagenet_source, tmp_path)
    damaged = root / "val" / "n01" / "n01_0.JPEG"
    damaged.write_bytes(b"")
    val = data.load("imagenet", "val", data_dir=root, image_size=8)
    direct = refused(lambda: val[0])
    assert refused(lambda: list(DataLoader(val, batch_size=2, num_workers=1))) == direct


def test_damaged_image_stops_training_and_the_run_resumes_once_it_is_replaced(imagenet_source, tmp_path):
    """A damaged image met in epoch 2 stops the run with one line; run.json still says what
    was done (epoch 1, running), and once the file is fixed the run resumes and finishes."""
    root = imagenet_copy(imagenet_source, tmp_path)
    image = root / "train" / "n01" / "n01_1.JPEG"
    original = image.read_bytes()
    config = TrainConfig("alexnet", width=0.125, data="imagenet", data_dir=str(root), epochs=2, batch_size=4,
                         model_options={"input_size": 16}, augment=False)

    def damage_after_first_epoch(metrics):
        if metrics["epoch"] == 1:
            image.write_bytes(original[:len(original) // 3])

    run = tmp_path / "run"
    refused(lambda: train(config, run, silent=True, on_epoch=damage_after_first_epoch),
            f"cannot read image {image}", "resumes")
    record = read_run(run)
    assert record["status"] == "running" and [e["epoch"] for e in record["epochs"]] == [1]
    assert not (run / "model.pt").exists()
    image.write_bytes(original)
    assert [e["epoch"] for e in train(config, run, silent=True)["epochs"]] == [1, 2]


# ---------------------------------------------------------------- model.pt, checkpoint.pt, run.json

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An MLP run stopped after its first of two epochs ("unfinished") and the same run finished."""
    root = tmp_path_factory.mktemp("runs")

    class Stop(Exception):
        pass

    def stop(metrics):
        raise Stop

    with pytest.raises(Stop):
        train(quick_mlp(), root / "unfinished", silent=True, on_epoch=stop)
    shutil.copytree(root / "unfinished", root / "finished")
    train(quick_mlp(), root / "finished", silent=True)
    return root


def quick_mlp():
    return TrainConfig("mlp", width=0.25, epochs=2)


def run_copy(runs, which, tmp_path):
    target = tmp_path / which
    shutil.copytree(runs / which, target)
    return target


def torch_bytes(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def edited(record: dict, changes: dict) -> dict:
    """``record`` with entries replaced: "KEY" or "KEY.INNER" (inside record[KEY]); None removes."""
    for path, value in changes.items():
        *outer, key = path.split(".")
        target = record[outer[0]] if outer else record
        if value is None:
            del target[key]
        else:
            target[key] = value
    return record


def model_record(changes=None):
    """A model.pt record of the MLP at width 0.25, edited by ``changes``."""
    net = models.build("mlp", 0.25)
    record = {"schema": "fu-fast/model/1", "model": dict(net.fu_fast_config), "state_dict": net.state_dict()}
    return torch_bytes(edited(record, changes or {}))


def unreadable_torch_files(folder):
    """Damage any torch file meets: file content -> fragments of the message."""
    return {
        "zero bytes": (b"", ["empty (0 bytes)"]),
        "random bytes": (random_bytes(), ["not a PyTorch checkpoint"]),
        "text": (b"epoch 1 loss 0.3\n", ["not a PyTorch checkpoint"]),
        "json": (json.dumps({"model": "mlp", "width": 1}).encode(), ["not a PyTorch checkpoint"]),
        "plain pickle": (pickle.dumps({"fc1.weight": [1.0]}), ["not a PyTorch checkpoint"]),
        "truncated": (model_record()[:500], ["truncated or damaged"]),
        "malicious": (torch_bytes({"schema": "fu-fast/model/1", "model": payloads(folder)["os.system"]}),
                      ["safe (weights-only) load refuses", "posix.system"]),
        "numpy inside": (torch_bytes({"fc1.weight": np.zeros(3)}), ["safe (weights-only) load refuses", "numpy"]),
    }


UNREADABLE = ["zero bytes", "random bytes", "text", "json", "plain pickle", "truncated", "malicious", "numpy inside"]
MODEL_RECORD_DAMAGE = {
    "no width": ({"model.width": None}, ["'model' record lacks 'width'"]),
    "no name": ({"model.name": None}, ["'model' record lacks 'name'"]),
    "width a string": ({"model.width": "wide"}, ["width='wide', not a number"]),
    "options a list": ({"model.options": []}, ["options=[], not a dict"]),
    "model a list": ({"model": ["mlp", 0.25]}, ["'model' record is a list"]),
    "no state_dict": ({"state_dict": None}, ["lacks 'state_dict'"]),
    "weights not tensors": ({"state_dict": {"fc1.weight": 1.0}}, ["'fc1.weight': float, not a tensor"]),
    "unknown model": ({"model.name": "vgg"}, ["cannot be built", "unknown model 'vgg'"]),
    "bad option": ({"model.options": {"dropout": 2.0}}, ["cannot be built", "dropout"]),
}


@pytest.mark.parametrize("damage", UNREADABLE)
def test_unreadable_model_file_is_named(runs, tmp_path, damage):
    run = run_copy(runs, "finished", tmp_path)
    content, fragments = unreadable_torch_files(tmp_path)[damage]
    (run / "model.pt").write_bytes(content)
    refused(lambda: load_model(run), f"cannot read checkpoint {run / 'model.pt'}", *fragments)
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("changes, fragments", MODEL_RECORD_DAMAGE.values(), ids=MODEL_RECORD_DAMAGE.keys())
def test_incomplete_model_record_is_named(runs, tmp_path, changes, fragments):
    run = run_copy(runs, "finished", tmp_path)
    (run / "model.pt").write_bytes(model_record(changes))
    refused(lambda: load_model(run), f"checkpoint {run / 'model.pt'}", *fragments)


RUN_RECORD_DAMAGE = {
    "zero bytes": ("", ["cannot read", "Expecting value"]),
    "a list": ("[1, 2, 3]", ["not a fu-fast run record (it holds a list"]),
    "schema only": ('{"schema": "fu-fast/run/1"}', ["lacks 'status'"]),
    "other schema": ('{"schema": "other/1"}', ["schema 'other/1'"]),
    "no settings": ({"settings": None}, ["lacks 'settings'"]),
    "settings a list": ({"settings": []}, ["settings is [], not dict"]),
    "unknown status": ({"status": "paused"}, ["status 'paused'"]),
    "data_dir a number": ({"settings.data_dir": 5}, ["settings.data_dir is 5, not str or null"]),
    "seed a string": ({"settings.data_seed": "0"}, ["settings.data_seed is '0', not int"]),
    "epochs an object": ({"epochs": {}}, ["epochs is {}, not list"]),
    "accuracy a string": ({"epochs": [{"epoch": 1, "test_accuracy": "high"}]}, ["epochs[0]"]),
}


def damaged_run_json(run, change):
    """run.json replaced by text (a str), or edited by ``change`` (a dict)."""
    if isinstance(change, str):
        return change
    return json.dumps(edited(json.loads((run / "run.json").read_text()), change))


@pytest.mark.parametrize("change, fragments", RUN_RECORD_DAMAGE.values(), ids=RUN_RECORD_DAMAGE.keys())
def test_malformed_run_record_is_named(runs, tmp_path, change, fragments):
    run = run_copy(runs, "finished", tmp_path)
    (run / "run.json").write_text(damaged_run_json(run, change))
    refused(lambda: read_run(run), str(run / "run.json"), *fragments)


def checkpoint_record(runs, changes):
    """The unfinished run's checkpoint.pt, edited by ``changes``."""
    return torch_bytes(edited(torch.load(runs / "unfinished" / "checkpoint.pt", weights_only=True), changes))


CHECKPOINT_RECORD_DAMAGE = {
    "a list": (lambda runs: torch_bytes([1, 2]), ["not a usable training checkpoint: it holds a list"]),
    "no optimizer": (lambda runs: checkpoint_record(runs, {"optimizer": None}), ["it lacks 'optimizer'"]),
    "no model_config": (lambda runs: checkpoint_record(runs, {"model_config": None}), ["it lacks 'model_config'"]),
    "no epoch": (lambda runs: checkpoint_record(runs, {"state.epoch": None}), ["loop state lacks 'epoch'"]),
    "done a string": (lambda runs: checkpoint_record(runs, {"state.done": "no"}), ["loop state has done='no'"]),
    "weights of another width": (
        lambda runs: checkpoint_record(runs, {"model": models.build("mlp", 2.0).state_dict()}),
        ["does not fit this run's model and optimiser", "size mismatch"]),
    "optimiser of another model": (
        lambda runs: checkpoint_record(runs, {"optimizer": {"state": {}, "param_groups": []}}),
        ["does not fit this run's model and optimiser"]),
}


@pytest.mark.parametrize("damage", list(CHECKPOINT_RECORD_DAMAGE) + ["zero bytes", "random bytes", "json",
                                                                    "truncated", "malicious"])
def test_damaged_training_checkpoint_stops_the_resume_and_says_how_to_start_over(runs, tmp_path, damage):
    run = run_copy(runs, "unfinished", tmp_path)
    checkpoint = run / "checkpoint.pt"
    if damage in CHECKPOINT_RECORD_DAMAGE:
        make, fragments = CHECKPOINT_RECORD_DAMAGE[damage]
        content = make(runs)
    else:
        content, fragments = unreadable_torch_files(tmp_path)[damage]
    checkpoint.write_bytes(content)
    run_json = (run / "run.json").read_text()
    refused(lambda: train(quick_mlp(), run, silent=True), f"checkpoint {checkpoint}", *fragments,
            "delete it to restart the run")
    assert (run / "run.json").read_text() == run_json and not (run / "model.pt").exists()
    assert not (tmp_path / MARKER).exists()


def test_deleting_a_damaged_checkpoint_restarts_the_run(runs, tmp_path):
    run = run_copy(runs, "unfinished", tmp_path)
    (run / "checkpoint.pt").write_bytes(b"")
    refused(lambda: train(quick_mlp(), run, silent=True), "delete it")
    (run / "checkpoint.pt").unlink()
    record = train(quick_mlp(), run, silent=True)
    assert record["status"] == "finished" and [e["epoch"] for e in record["epochs"]] == [1, 2]


# ---------------------------------------------------------------- the command line

ANALYZE_QUICK = ["--levels", "3", "--repeats", "1", "--limit", "4", "-q"]


@pytest.mark.parametrize("damage", ["zero bytes", "text", "truncated", "malicious", "no width"])
def test_cli_analyze_and_compress_a_damaged_model_file(runs, tmp_path, damage):
    run = run_copy(runs, "finished", tmp_path)
    if damage == "no width":
        content, fragments = model_record({"model.width": None}), ["lacks 'width'"]
    else:
        content, fragments = unreadable_torch_files(tmp_path)[damage]
    (run / "model.pt").write_bytes(content)
    out = tmp_path / "analysis.json"
    one_error_line(invoke("analyze", "--checkpoint", run, "--out", out, *ANALYZE_QUICK),
                   str(run / "model.pt"), *fragments)
    assert not out.exists()
    thin = tmp_path / "thin"
    one_error_line(invoke("compress", "--checkpoint", run, "--out", thin), str(run / "model.pt"), *fragments)
    assert not thin.exists() and not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("change, fragment", [("[1, 2, 3]", "holds a list"),
                                              ('{"schema": "fu-fast/run/1"}', "lacks 'status'"),
                                              ({"settings": None}, "lacks 'settings'")])
def test_cli_analyze_and_compress_with_a_malformed_run_record(runs, tmp_path, change, fragment):
    run = run_copy(runs, "finished", tmp_path)
    (run / "run.json").write_text(damaged_run_json(run, change))
    out = tmp_path / "analysis.json"
    one_error_line(invoke("analyze", "--checkpoint", run, "--out", out, *ANALYZE_QUICK),
                   str(run / "run.json"), fragment)
    assert not out.exists()
    thin = tmp_path / "thin"
    one_error_line(invoke("compress", "--checkpoint", run, "--out", thin), str(run / "run.json"), fragment)
    assert not thin.exists()


@pytest.mark.parametrize("damage", ["zero bytes", "malicious", "int64 pixels", "label 57"])
def test_cli_analyze_on_a_damaged_cifar_directory(cifar_source, tmp_path, damage):
    root, test_batch = cifar_copy(cifar_source, tmp_path)
    if damage == "malicious":
        content, fragments = batch(labels=payloads(tmp_path)["os.system"]), ["refused", "posix.system"]
    else:
        content, fragments = CIFAR_DAMAGE[damage]
    test_batch.write_bytes(content)
    out = tmp_path / "analysis.json"
    one_error_line(invoke("analyze", "--model", "alexnet", "--width", "0.125", "--data", "cifar10", "--data-dir",
                          root, "--out", out, *ANALYZE_QUICK), str(test_batch), *fragments)
    assert not out.exists() and not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_cli_analyze_on_a_damaged_image(imagenet_source, tmp_path, workers):
    root = imagenet_copy(imagenet_source, tmp_path)
    damaged = root / "val" / "n01" / "n01_0.JPEG"
    damaged.write_bytes(random_bytes())
    out = tmp_path / "analysis.json"
    one_error_line(invoke("analyze", "--model", "alexnet", "--width", "0.125", "--data", "imagenet", "--data-dir",
                          root, "--image-size", "16", "--workers", workers, "--out", out, *ANALYZE_QUICK),
                   f"cannot read image {damaged}")
    assert not out.exists()


def test_cli_train_with_a_label_out_of_range_writes_no_run(cifar_source, tmp_path):
    root, _ = cifar_copy(cifar_source, tmp_path)
    first = root / "cifar-10-batches-py" / "data_batch_1"
    first.write_bytes(batch(labels=[57, 1, 2, 3]))
    run = tmp_path / "run"
    one_error_line(invoke("train", "--model", "alexnet", "--width", "0.125", "--epochs", "1", "--data-dir", root,
                          "--out", run, "-q"), str(first), "label 57")
    assert not (run / "run.json").exists()


@pytest.mark.parametrize("damage", ["zero bytes", "random bytes", "malicious"])
def test_cli_train_resume_with_a_damaged_checkpoint(runs, tmp_path, damage):
    run = run_copy(runs, "unfinished", tmp_path)
    content, fragments = unreadable_torch_files(tmp_path)[damage]
    (run / "checkpoint.pt").write_bytes(content)
    one_error_line(invoke("train", "--model", "mlp", "--width", "0.25", "--epochs", "2", "--out", run, "-q"),
                   str(run / "checkpoint.pt"), *fragments, "delete it to restart")
    assert not (run / "model.pt").exists() and not (tmp_path / MARKER).exists()
