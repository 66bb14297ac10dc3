"""`fu-fast visualize`: feature visualisation and the Table 2 test (fu_fast.vis)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from fu_fast.atomic import check_writable_dir
from fu_fast.errors import FuFastError

from .console import ProgressBar, err, out, user_errors


class Alternative(str, Enum):
    greater = "greater"
    less = "less"


class Objective(str, Enum):
    mean = "mean"
    center = "center"


@user_errors
def visualize(
    thin: Optional[Path] = typer.Argument(None, help="the thin model: a run directory of fu-fast train, or a .pt file"),
    wide: Optional[Path] = typer.Argument(None, help="the wide model: a run directory or a .pt file"),
    out_dir: Path = typer.Option(..., "--out", help="directory for visualize.json, table2.md and grids/"),
    model: Optional[str] = typer.Option(None, help="instead of checkpoints: an untrained zoo model (resnet18, ...)"),
    thin_width: float = typer.Option(0.25, help="width of the untrained thin model (with --model)"),
    wide_width: float = typer.Option(4.0, help="width of the untrained wide model (with --model)"),
    units: int = typer.Option(8, help="random units visualised per layer and model"),
    steps: int = typer.Option(256, help="optimisation steps per image"),
    layers: Optional[List[str]] = typer.Option(None, "--layers", help="layer (repeatable) [default: the model's "
                                                                      "analysis layers]"),
    image_size: Optional[int] = typer.Option(None, help="image side [default: the model's input size]"),
    lr: float = typer.Option(0.05, help="Adam learning rate on the Fourier coefficients"),
    objective: Objective = typer.Option(Objective.mean, help="a unit's activation: mean of its map, or its centre"),
    alternative: Alternative = typer.Option(Alternative.greater,
                                            help="H1 of the test: thin TV greater (or less) than wide TV"),
    shufflings: int = typer.Option(100_000, help="label shufflings of the permutation test"),
    batch_size: Optional[int] = typer.Option(None, help="units optimised together [default: all of a layer's]"),
    seed: int = typer.Option(0, help="seed of the unit choice, the images, the test and untrained weights"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N [default: cuda if usable]"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no table, no progress"),
) -> None:
    """Feature visualisations of random units, thin vs wide model, and the paper's Table 2 test.

    Total variation of each unit's image in pixel and frequency space; per layer a one-sided
    rank-based permutation test and the mean effect (thin mean / wide mean). Give two checkpoints
    (THIN WIDE), or --model with --thin-width/--wide-width for untrained models.
    """
    from fu_fast.vis import load_subject, run_experiment
    from fu_fast.vis.experiment import check_settings

    settings = dict(units=units, steps=steps, image_size=image_size, lr=lr, objective=objective.value,
                    shufflings=shufflings, alternative=alternative.value, batch_size=batch_size)
    check_settings(**settings)   # before two models are loaded or built
    check_writable_dir(out_dir)

    if model is not None and (thin is not None or wide is not None):
        raise FuFastError("give either two checkpoints (THIN WIDE) or --model with widths, not both")
    if model is None and (thin is None or wide is None):
        raise FuFastError("say what to compare: two checkpoints (THIN WIDE), "
                          "or --model M [--thin-width] [--wide-width]")
    if model is not None:
        subjects = [load_subject("thin", model=model, width=thin_width, seed=seed),
                    load_subject("wide", model=model, width=wide_width, seed=seed)]
    else:
        subjects = [load_subject("thin", thin), load_subject("wide", wide)]
    with ProgressBar(quiet, 1, "visualize") as report:
        document = run_experiment(*subjects, out_dir, layers=layers or None, device=device, seed=seed,
                                  progress=report, **settings)
    if not quiet:
        out.print(_result_table(document))
        err.print(f"wrote {out_dir}/visualize.json, table2.md and grids/", highlight=False)


def _result_table(document: dict) -> Table:
    thin, wide = document["models"]["thin"], document["models"]["wide"]
    table = Table(title=f"total variation, {thin['name']} x{thin['width']:g} (thin) vs x{wide['width']:g} (wide)")
    for column in ("layer", "units", "p pixel", "effect pixel", "p frequency", "effect frequency"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for layer in document["layers"]:
        cells = [layer["name"], f"{len(layer['thin']['units'])}/{len(layer['wide']['units'])}"]
        for space in ("pixel", "frequency"):
            result = layer[space]
            cells += [f"{result['p_value']:.4f}",
                      "-" if result["mean_effect"] is None else f"{result['mean_effect']:.3f}"]
        table.add_row(*cells)
    return table
