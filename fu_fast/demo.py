"""A short example analysis: the paper's Appendix B on untrained networks.

    python -m fu_fast.demo [--out DIR] [--examples N]

Analyses a width series of untrained one-hidden-layer ReLU MLPs (4,096-dimensional
Gaussian inputs, 10 outputs, zero biases: the symmetry conditions of Appendix B), prints
per-width prunable and redundant units and their gains g, and writes one analysis JSON
per width into DIR. Expected: both gains close to 2 (an untrained network's frivolous
units grow in proportion to its width), redundancy less exactly so at the large widths,
where the samples are not many more than the units.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from . import FuFastError, analyze, gain

WIDTHS = (64, 128, 256, 512, 1024)
INPUT_DIM, CLASSES = 4096, 10


def untrained_mlp(width: int, seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(INPUT_DIM, width), torch.nn.ReLU(), torch.nn.Linear(width, CLASSES))
    with torch.no_grad():
        model[0].bias.zero_()
        model[2].bias.zero_()
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fu_fast.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the analysis JSON files")
    parser.add_argument("--examples", type=int, default=4000, help="evaluation examples (Gaussian inputs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.examples < 2:
            raise FuFastError("--examples must be at least 2")
        inputs = torch.randn(args.examples, INPUT_DIM, generator=torch.Generator().manual_seed(args.seed))
        prunable, redundant = [], []
        print(f"{'width':>6} {'prunable units':>15} {'redundant units':>16} {'seconds':>8}")
        for width in WIDTHS:
            started = time.perf_counter()
            result = analyze(untrained_mlp(width, args.seed + width), inputs, layers=["1"], seed=args.seed,
                             model_info={"name": "mlp-untrained", "width": width / 256,
                                         "options": {"input_dim": INPUT_DIM, "hidden": width, "bias": "zero"}},
                             data_info={"name": "gaussian", "split": "test", "options": {"input_dim": INPUT_DIM}})
            result.save(args.out / f"width-{width}.json")
            layer = result.layers["1"]
            prunable.append(layer.prunable_units)
            redundant.append(layer.redundant_units)
            print(f"{width:>6} {layer.prunable_units:>15.1f} {layer.redundant_units:>16d} "
                  f"{time.perf_counter() - started:>8.1f}")
        print(f"g (prunable)  = {gain(WIDTHS, prunable):.3f}")
        print(f"g (redundant) = {gain(WIDTHS, redundant):.3f}" if min(redundant) > 0 else
              "g (redundant) undefined: a width has no redundant units")
        print(f"results in {args.out}/")
    except FuFastError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
