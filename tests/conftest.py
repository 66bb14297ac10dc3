import pytest
import torch


@pytest.fixture
def generator():
    """A fresh, seeded generator per test: inputs are random but reproducible."""
    return torch.Generator().manual_seed(20261125)


def mlp(inputs: int, hidden: int, classes: int, *, bias: bool = True, dtype=torch.float64, seed: int = 0):
    """fc -> ReLU -> out; the analysed layer is '1' (the ReLU)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(inputs, hidden, bias=bias), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, classes, bias=bias)).to(dtype)


def small_cnn(channels: int = 6, classes: int = 5, dtype=torch.float64, seed: int = 0):
    """conv -> ReLU (layer '1', a conv cut point) -> conv -> ReLU (layer '3') -> pool -> fc."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, channels, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * channels, classes),
    ).to(dtype)


def write_cifar10(root, per_batch: int = 20, seed: int = 0, str_keys_in_first: bool = False):
    """A CIFAR-10 directory in the real on-disk format (python pickles), tiny: 5 training
    batches and a test batch of ``per_batch`` random images each. Returns the pixel arrays
    and labels written, keyed by file name. ``str_keys_in_first`` writes the first batch with
    str keys (as pickles read with encoding latin1 have them), the others with bytes keys."""
    import pickle
    from pathlib import Path

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        pixels = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        key = (lambda k: k) if (i == 0 and str_keys_in_first) else str.encode
        with open(folder / name, "wb") as f:
            pickle.dump({key("batch_label"): name, key("data"): pixels, key("labels"): labels,
                         key("filenames"): [f"{j}.png" for j in range(per_batch)]}, f)
        written[name] = (pixels, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)], b"num_cases_per_batch": per_batch,
                     b"num_vis": 3072}, f)
    return written


def one_error_line(result, *fragments) -> str:
    """A command's refusal: exit code 2, and stderr exactly one line starting with `error: ` that
    holds every fragment and never PyTorch's advice to load unsafely. Returns the line."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "weights_only" not in lines[0], lines[0]
    return lines[0]
