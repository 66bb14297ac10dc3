"""A short example analysis: the paper's Appendix B on untrained networks.

    python -m fu_fast.demo [--out DIR] [--examples N] [--networks M]

Analyses a width series of untrained one-hidden-layer ReLU MLPs (4,096-dimensional
Gaussian inputs, 10 outputs, zero biases: the symmetry conditions of Appendix B), prints
per-width prunable and redundant units (means over M independently initialised networks)
and their gains g, and writes one analysis JSON per width (first network) into DIR.

What to expect, measured with this code (tests/test_appendix_b.py has the details):
* prunable g about 1.9 (E[g] = 1.89 with zero biases; one network per width scatters
  between 1.5 and 2.3, which is why the demo averages several);
* redundant g about 2.5, above 2: with 4,000 samples and 4,096 inputs the widest layers
  are not much narrower than either, which spreads the PCA spectrum more at larger widths
  (the paper's own failing regime). Holding samples/width and inputs/width fixed gives 2.
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
    parser.add_argument("--networks", type=int, default=8, help="untrained networks averaged per width")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.examples < 2:
            raise FuFastError("--examples must be at least 2")
        if args.networks < 1:
            raise FuFastError("--networks must be at least 1")
        inputs = torch.randn(args.examples, INPUT_DIM, generator=torch.Generator().manual_seed(args.seed))
        prunable, redundant = [], []
        print(f"{'width':>6} {'prunable units':>15} {'redundant units':>16} {'seconds':>8}")
        for width in WIDTHS:
            started = time.perf_counter()
            layers = []
            for net in range(args.networks):
                result = analyze(untrained_mlp(width, args.seed + 1000 * net + width), inputs, layers=["1"],
                                 seed=args.seed + net,
                                 model_info={"name": "mlp-untrained", "width": width / 256,
                                             "options": {"input_dim": INPUT_DIM, "hidden": width, "bias": "zero"}},
                                 data_info={"name": "gaussian", "split": "test", "options": {"input_dim": INPUT_DIM}})
                if net == 0:
                    result.save(args.out / f"width-{width}.json")
                layers.append(result.layers["1"])
            prunable.append(sum(layer.prunable_units for layer in layers) / len(layers))
            redundant.append(sum(layer.redundant_units for layer in layers) / len(layers))
            print(f"{width:>6} {prunable[-1]:>15.1f} {redundant[-1]:>16.1f} "
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
