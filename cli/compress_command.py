"""`fu-fast compress`: thinner equivalent networks (fu_fast.compress)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from fu_fast.atomic import check_writable_dir
from fu_fast.errors import FuFastError

from .console import ProgressBar, err, out, user_errors


class Method(str, Enum):
    refactor = "refactor"
    prune = "prune"
    both = "both"


class Search(str, Enum):
    auto = "auto"
    greedy = "greedy"
    random = "random"


@user_errors
def compress_command(
    checkpoint: Path = typer.Option(..., help="the wide model: a run directory of fu-fast train, or a .pt file"),
    out_dir: Path = typer.Option(..., "--out", help="run directory for the thin model (model.pt, run.json, "
                                                   "compress.json)"),
    method: Method = typer.Option(Method.both, help="refactor (fold redundant units into the next layer), prune "
                                                    "(drop prunable units) or both"),
    tolerance: float = typer.Option(0.02, help="label agreement with the wide model may fall to 1 - this (fit set)"),
    pca_tolerance: float = typer.Option(0.05, help="variance share the kept units may leave out (refactor)"),
    search: Search = typer.Option(Search.auto, help="pruning search: greedy, random (keyed ablation orders), or "
                                                    "auto (greedy before the output layer, random elsewhere)"),
    layers: Optional[List[str]] = typer.Option(None, "--layers", help="layer to compress (repeatable) "
                                                                     "[default: the model's analysis layers]"),
    data: Optional[str] = typer.Option(None, help="synthetic, cifar10 or imagenet [default: the run's]"),
    data_dir: Optional[Path] = typer.Option(None, help="data location [default: the run's]"),
    fit_split: str = typer.Option("train", help="split the coefficients and searches are fitted on"),
    split: str = typer.Option("test", help="split the report's agreement and accuracy are measured on"),
    fit_limit: Optional[int] = typer.Option(5000, help="fit on the first N examples (all are kept in memory)"),
    limit: Optional[int] = typer.Option(None, help="evaluate on the first N examples"),
    repeats: int = typer.Option(3, help="random orders of the random search"),
    sample_cap: int = typer.Option(50_000, help="most sampled positions per conv layer for the refactor"),
    seed: int = typer.Option(0, help="seed of the random search and the position sample"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N [default: cuda if usable]"),
    batch_size: int = typer.Option(512, help="rows per forward pass"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no table, no progress"),
) -> None:
    """A thinner network with (almost) the same labels: the redundant units refactored into the
    next layer (the paper's Appendix C) and the prunable ones dropped, layer by layer from the
    output backwards. Sequential models only (mlp, alexnet)."""

    from fu_fast import data as data_lib
    from fu_fast.compress.chain import check_sequential
    from fu_fast.compress.engine import compress
    from fu_fast.compress.checkpoint import save
    from fu_fast.devices import resolve_device
    from fu_fast.train import load_model, read_run

    if (out_dir.resolve() == checkpoint.resolve()
            or (checkpoint.is_file() and out_dir.resolve() == checkpoint.parent.resolve())):
        raise FuFastError("--out must be a new directory, not the wide model's run directory")
    check_writable_dir(out_dir)
    target = resolve_device(device)
    wide, _ = load_model(checkpoint)
    check_sequential(wide)   # refuse skip-connection models before any data is read
    run = read_run(checkpoint if checkpoint.is_dir() else checkpoint.parent)
    settings = run["settings"] if run else None
    load = lambda which, n: data_lib.for_analysis(  # noqa: E731
        wide.fu_fast_config, trained=settings, name=data, split=which,
        data_dir=str(data_dir) if data_dir else None, limit=n)
    fit_set, eval_set = load(fit_split, fit_limit), load(split, limit)
    with ProgressBar(quiet, 1, "compress") as report:
        result = compress(wide.to(target), fit_set, eval_data=eval_set, layers=layers or None, method=method.value,
                          tolerance=tolerance, pca_tolerance=pca_tolerance, search_method=search.value,
                          repeats=repeats, seed=seed, sample_cap=sample_cap, device=target, batch_size=batch_size,
                          progress=report)
    result.model.to("cpu")
    save(result, out_dir, source=str(checkpoint), source_run=run)
    if not quiet:
        out.print(_table(result.report))
        err.print(f"wrote {out_dir}", highlight=False)


def _table(report: dict) -> Table:
    m, p, a, acc = report["model"], report["parameters"], report["agreement"], report["accuracy"]
    accuracy = "" if acc["wide"] is None else f", accuracy {acc['wide']:.4f} -> {acc['thin']:.4f}"
    table = Table(title=f"{m.get('name')} x{m.get('width')}: {p['before']:,} -> {p['after']:,} parameters, "
                        f"label agreement {a['eval']:.4f} (fit {a['fit']:.4f}){accuracy}")
    columns = ("layer", "kind", "units", "PCA k", "refactored", "pruned", "parameters", "agreement", "exact")
    for column in columns:
        table.add_column(column, justify="left" if column in ("layer", "kind", "exact") else "right")
    for layer in report["layers"]:
        refactored, pruned = layer.get("refactor"), layer.get("prune")
        table.add_row(layer["name"], layer["kind"], f"{layer['units_before']} -> {layer['units_after']}",
                      "-" if refactored is None else str(refactored["components"]),
                      "-" if refactored is None else str(refactored["dropped"]),
                      "-" if pruned is None else f"{pruned['dropped']} ({pruned['search']})",
                      f"{layer['parameters_before']:,} -> {layer['parameters_after']:,}",
                      f"{layer['eval_agreement']:.4f}", "yes" if layer["exact"] else "approx.")
    return table
