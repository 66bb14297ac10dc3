"""Training speed with the paper's settings: the MLP width series, and AlexNet-CIFAR epochs.

    python benchmarks/bench_train.py [--mlp-epochs 50] [--alexnet-batches 20] [--device cpu]

* MLP: trains the synthetic-data series (widths 0.25-4, 10-dimensional inputs, 50 epochs,
  batch 32, momentum SGD) through fu_fast.train, exactly as `fu-fast train` does, and prints
  seconds per model and the final test accuracy.
* AlexNet-CIFAR: times training steps (batch 128, data loading from CIFAR-format files
  included) on a generated data set in the real on-disk format, and extrapolates to one
  epoch of 45,000 images. The data is random, so no accuracy is reported.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fu_fast.train import TrainConfig, train

WIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)
EPOCH_IMAGES = 45_000


def write_random_cifar(root: Path, per_batch: int) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, per_batch).tolist()}, f)


def bench_mlp(epochs: int, device: str | None, out: Path) -> None:
    print(f"MLP series, synthetic data (10 dims), {epochs} epochs each")
    print(f"{'width':>6} {'seconds':>8} {'test acc':>9}")
    for width in WIDTHS:
        started = time.perf_counter()
        record = train(TrainConfig("mlp", width=width, epochs=epochs, device=device), out / f"mlp-{width}",
                       quiet=True)
        print(f"{width:>6} {time.perf_counter() - started:>8.1f} {record['epochs'][-1]['test_accuracy']:>9.4f}")


def bench_alexnet(batches: int, width: float, device: str | None, out: Path) -> None:
    # 5 training files of `per_batch` images, of which 90% train (the rest is the validation split).
    per_batch = -(-batches * 128 * 10 // 45)
    write_random_cifar(out / "cifar", per_batch)
    config = TrainConfig("alexnet", width=width, data_dir=str(out / "cifar"), epochs=1, device=device,
                         evaluate_test=False, patience=None)
    started = time.perf_counter()
    record = train(config, out / "alexnet", quiet=True)
    epoch = record["epochs"][0]
    images = record["data"]["train"]["examples"]
    # The epoch's time includes a validation pass over a ninth as many images (about 1/27
    # of a training step's cost each: one forward, no backward); it is counted as training.
    per_image = epoch["seconds"] / images
    print(f"AlexNet-CIFAR x{width}: {images} training images in {epoch['seconds']:.1f} s "
          f"({images / epoch['seconds']:.0f} images/s, wall {time.perf_counter() - started:.1f} s with setup); "
          f"one epoch of {EPOCH_IMAGES:,} images: about {per_image * EPOCH_IMAGES / 60:.1f} min")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mlp-epochs", type=int, default=50)
    parser.add_argument("--alexnet-batches", type=int, default=20, help="training batches of 128 to time")
    parser.add_argument("--alexnet-width", type=float, default=1.0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--skip", choices=("mlp", "alexnet"), action="append", default=[])
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device or 'default'}")
    with tempfile.TemporaryDirectory() as tmp:
        if "mlp" not in args.skip:
            bench_mlp(args.mlp_epochs, args.device, Path(tmp))
        if "alexnet" not in args.skip:
            bench_alexnet(args.alexnet_batches, args.alexnet_width, args.device, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
