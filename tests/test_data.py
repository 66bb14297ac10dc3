"""fu_fast.data: small data sets written in the real on-disk formats, read back."""

import copyreg
import io
import pickle
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fu_fast import FuFastError, data
from fu_fast.data import cifar10
from fu_fast.data.labels import RandomLabels

from conftest import write_cifar10

PER_BATCH = 20  # images per CIFAR-10 batch file: 100 training images, 20 test images


def one_line_error(match, *args, **kwargs):
    with pytest.raises(FuFastError, match=match) as e:
        data.load(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


# ---------------------------------------------------------------- CIFAR-10

@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """cifar-10-batches-py with data_batch_1..5, test_batch and batches.meta, as pickles
    of the real format; returns (parent folder, {file: (uint8 (N, 3072), labels)})."""
    root = tmp_path_factory.mktemp("cifar")
    written = write_cifar10(root, per_batch=PER_BATCH, str_keys_in_first=True)
    return root, written


def test_cifar10_test_split_reads_back_pixels_and_labels(cifar_dir):
    root, written = cifar_dir
    test = data.load("cifar10", "test", data_dir=root)
    pixels, labels = written["test_batch"]
    assert len(test) == PER_BATCH and test.num_classes == 10
    assert test.info == {"name": "cifar10", "examples": PER_BATCH, "split": "test",
                         "options": {"image_size": 32, "random_labels": False, "augment": False, "seed": 0}}
    mean, std = torch.tensor(cifar10.MEAN).view(3, 1, 1), torch.tensor(cifar10.STD).view(3, 1, 1)
    for k in (0, 7):
        x, y = test[k]
        expected = (torch.from_numpy(pixels[k].reshape(3, 32, 32)).float() / 255 - mean) / std  # row-major CHW
        assert x.shape == (3, 32, 32) and torch.allclose(x, expected, atol=1e-5)
        assert y == labels[k]


def test_cifar10_train_val_split(cifar_dir):
    root, written = cifar_dir
    train, val = (data.load("cifar10", s, data_dir=root / "cifar-10-batches-py") for s in ("train", "val"))
    assert (len(train), len(val)) == (90, 10)  # a tenth of the training images (5,000 of 50,000)
    everything = {}
    for k in range(1, 6):
        pixels, labels = written[f"data_batch_{k}"]
        everything.update((row.tobytes(), y) for row, y in zip(pixels, labels))
    seen = [{img.transpose(2, 0, 1).tobytes() for img in ds.images} for ds in (train, val)]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(everything)
    for img, y in zip(train.images, train.targets):
        assert everything[img.transpose(2, 0, 1).tobytes()] == y
    # The split is fixed (seed 0), independent of the run seed.
    again = data.load("cifar10", "val", data_dir=root, seed=5)
    assert np.array_equal(again.images, val.images) and again.targets == val.targets


def test_cifar10_augmentation_and_resize(cifar_dir):
    root, _ = cifar_dir
    plain = data.load("cifar10", "train", data_dir=root)
    augmented = data.load("cifar10", "train", data_dir=root, augment=True)
    assert augmented.info["options"]["augment"] is True
    torch.manual_seed(0)
    pairs = [(plain[k][0], augmented[k][0]) for k in range(10)]
    assert all(a.shape == (3, 32, 32) for _, a in pairs)
    assert any(not torch.equal(p, a) for p, a in pairs)
    assert data.load("cifar10", "test", data_dir=root, image_size=40)[0][0].shape == (3, 40, 40)
    # Augmentation is for the training split only: the same options give plain val images.
    assert data.load("cifar10", "val", data_dir=root, augment=True).info["options"]["augment"] is False


def test_cifar10_missing_or_broken_directory(tmp_path, cifar_dir):
    message = one_line_error("cifar-10-batches-py", "cifar10", "train", data_dir=tmp_path / "nowhere")
    assert "data_batch_1..5" in message and "cs.toronto.edu" in message
    one_line_error("data directory", "cifar10", "train")
    one_line_error(f"no cifar-10-batches-py under {tmp_path}", "cifar10", "test", data_dir=tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    source = cifar_dir[0] / "cifar-10-batches-py"
    for k in range(1, 6):
        (folder / f"data_batch_{k}").write_bytes((source / f"data_batch_{k}").read_bytes())
    assert "lacks test_batch" in one_line_error("test_batch", "cifar10", "train", data_dir=tmp_path)
    (folder / "test_batch").write_bytes(b"not a pickle")
    one_line_error("not a CIFAR-10 python batch", "cifar10", "test", data_dir=tmp_path)



def python2_batch(pixels, labels) -> bytes:
    """A batch as the official files encode it (Python 2 and numpy 1 wrote them): str keys, the
    pixel bytes as a str (read back as latin1 text), numpy.core.multiarray._reconstruct."""
    reconstruct = pixels.__reduce__()[0]

    def reduce_array(a):
        return reconstruct, (np.ndarray, (0,), "b"), (1, a.shape, a.dtype, False, a.tobytes().decode("latin1"))

    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=2)
    pickler.dispatch_table = {**copyreg.dispatch_table, np.ndarray: reduce_array}
    pickler.dump({"batch_label": "testing batch 1 of 1", "data": pixels, "labels": labels,
                  "filenames": [f"{j}.png" for j in range(len(labels))]})
    return buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5, "python 2"])
def test_cifar10_batches_of_every_pickle_protocol_load(cifar_dir, tmp_path, protocol):
    """The restricted unpickler admits every encoding of the format: numpy 1 and 2 module
    names, protocol 5's _frombuffer, protocol < 3's bytes as _codecs.encode(text, "latin1")."""
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(cifar_dir[0] / "cifar-10-batches-py", folder)
    pixels = np.random.default_rng(3).integers(0, 256, (5, 3072), dtype=np.uint8)
    labels = [9, 0, 4, 4, 1]
    content = python2_batch(pixels, labels) if protocol == "python 2" else \
        pickle.dumps({b"data": pixels, b"labels": labels, b"batch_label": b"test"}, protocol=protocol)
    (folder / "test_batch").write_bytes(content)
    test = data.load("cifar10", "test", data_dir=tmp_path)
    assert test.targets == labels
    assert np.array_equal(test.images, pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))

# ---------------------------------------------------------------- ImageNet (ImageFolder)

COLOURS = {"n01": (220, 20, 20), "n02": (20, 220, 20), "n03": (20, 20, 220)}  # class -> dominant channel


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    for split, count in (("train", 3), ("val", 2)):
        for cls, colour in COLOURS.items():
            (root / split / cls).mkdir(parents=True)
            for j in range(count):
                Image.new("RGB", (50, 40), colour).save(root / split / cls / f"{cls}_{j}.JPEG", quality=95)
    return root


def test_imagenet_reads_back_labels_and_shapes(imagenet_dir):
    val = data.load("imagenet", "val", data_dir=imagenet_dir, image_size=32)
    assert len(val) == 6 and val.num_classes == 3
    assert val.info == {"name": "imagenet", "examples": 6, "split": "val",
                        "options": {"image_size": 32, "random_labels": False, "augment": False, "seed": 0}}
    for k in range(len(val)):
        x, y = val[k]
        assert x.shape == (3, 32, 32) and x.mean((1, 2)).argmax().item() == y  # colour encodes the class
    assert len(data.load("imagenet", "test", data_dir=imagenet_dir)) == 6  # "test" reads val/ too
    train = data.load("imagenet", "train", data_dir=imagenet_dir, image_size=299, augment=True)
    assert len(train) == 9 and train.num_classes == 3 and train.info["options"]["augment"] is True
    assert train[0][0].shape == (3, 299, 299)
    assert data.load("imagenet", "val", data_dir=imagenet_dir)[0][0].shape == (3, 224, 224)  # default size


def test_imagenet_missing_folders(tmp_path, imagenet_dir):
    (tmp_path / "train" / "n01").mkdir(parents=True)
    assert "no val/" in one_line_error("ImageFolder layout", "imagenet", "val", data_dir=tmp_path)
    one_line_error("ImageFolder layout", "imagenet", "train", data_dir=tmp_path)  # class folder without images
    one_line_error("data directory", "imagenet", "val")
    (tmp_path / "val" / "n02").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "n02" / "a.JPEG")
    one_line_error("different class folders", "imagenet", "val", data_dir=tmp_path)


# ---------------------------------------------------------------- synthetic

def test_synthetic_sizes_balance_and_teacher():
    train, test = data.load("synthetic", "train"), data.load("synthetic", "test")
    assert (len(train), len(test)) == (1000, 1000) and train.num_classes == 2
    assert train.inputs.shape == (1000, 10) and train.inputs.dtype == torch.float32
    x, y = train[3]
    assert x.shape == (10,) and isinstance(y, int)
    assert train.info == {"name": "synthetic", "examples": 1000, "split": "train",
                          "options": {"input_dim": 10, "random_labels": False, "augment": False, "seed": 0}}
    for ds in (train, test):
        assert set(ds.targets.tolist()) == {0, 1} and 0.4 <= ds.targets.float().mean() <= 0.6
        assert torch.equal(ds.teacher(ds.inputs).argmax(1), ds.targets)
    assert not torch.equal(train.inputs, test.inputs)
    assert abs(train.inputs.mean()) < 0.05 and abs(train.inputs.std() - 1) < 0.05


def test_synthetic_is_a_function_of_the_seed():
    state = torch.get_rng_state()
    a, b = data.load("synthetic", "train", seed=3), data.load("synthetic", "train", seed=3)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    for p, q in zip(a.teacher.parameters(), b.teacher.parameters()):
        assert torch.equal(p, q)
    c = data.load("synthetic", "train", seed=4)
    assert not torch.equal(a.inputs, c.inputs) and not torch.equal(a.teacher[0].weight, c.teacher[0].weight)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never touched


def test_synthetic_high_dimensional_and_no_val():
    start = time.perf_counter()
    big = data.load("synthetic", "test", input_dim=10_000)
    assert time.perf_counter() - start < 10
    assert big.inputs.shape == (1000, 10_000) and big.info["options"]["input_dim"] == 10_000
    assert 0.4 <= big.targets.float().mean() <= 0.6
    one_line_error("train and test splits only", "synthetic", "val")


# ---------------------------------------------------------------- random labels

def test_random_labels_fixed_per_seed_and_split_inputs_unchanged():
    true = data.load("synthetic", "train")
    a, b = (data.load("synthetic", "train", random_labels=True) for _ in range(2))
    assert torch.equal(a.targets, b.targets) and a.num_classes == 2
    assert a.info["options"]["random_labels"] is True
    assert 0.43 < (a.targets != true.targets).float().mean() < 0.57  # 1 - 1/C
    assert [a[k][1] for k in range(5)] == a.targets[:5].tolist()
    assert all(torch.equal(a[k][0], true[k][0]) for k in range(0, 1000, 97))
    other_seed = data.load("synthetic", "train", random_labels=True, seed=1)
    other_split = data.load("synthetic", "test", random_labels=True)
    assert not torch.equal(a.targets, other_seed.targets) and not torch.equal(a.targets, other_split.targets)


class _Labels:
    """A stand-in base data set: only its length, classes and labels matter."""

    num_classes = 10

    def __init__(self, n):
        self.targets = torch.arange(n) % 10

    def __len__(self):
        return len(self.targets)


def test_random_labels_are_uniform():
    base = _Labels(20_000)
    shuffled = RandomLabels(base, seed=0, split="train")
    counts = torch.bincount(shuffled.targets, minlength=10)
    assert counts.min() > 1800 and counts.max() < 2200  # 2,000 expected, sd about 42
    assert 0.89 < (shuffled.targets != base.targets).float().mean() < 0.91  # 1 - 1/C


def test_random_labels_on_images_drop_augmentation(cifar_dir):
    root, _ = cifar_dir
    shuffled = data.load("cifar10", "train", data_dir=root, random_labels=True, augment=True)
    plain = data.load("cifar10", "train", data_dir=root)
    assert shuffled.info["options"]["augment"] is False  # the paper's variant has none
    assert all(torch.equal(shuffled[k][0], plain[k][0]) for k in range(5))
    assert 0.75 < (torch.tensor(plain.targets) != shuffled.targets).float().mean() <= 1


# ---------------------------------------------------------------- bad options

def test_names():
    assert data.names() == ["synthetic", "cifar10", "imagenet", "digits"]


@pytest.mark.parametrize("args, kwargs, match", [
    (("mnist", "train"), {}, "unknown data set 'mnist'; choose one of synthetic, cifar10, imagenet, digits"),
    (("synthetic", "validation"), {}, "unknown split 'validation'"),
    (("synthetic", "train"), {"input_dim": 0}, "input_dim must be a positive integer, got 0"),
    (("synthetic", "train"), {"input_dim": True}, "input_dim must be a positive integer"),
    (("synthetic", "train"), {"image_size": 32}, "image_size applies to cifar10, imagenet and digits"),
    (("cifar10", "train"), {"image_size": 0}, "image_size must be a positive integer"),
    (("synthetic", "train"), {"seed": -1}, "seed must be a non-negative integer"),
])
def test_bad_options(args, kwargs, match):
    one_line_error(match, *args, **kwargs)
