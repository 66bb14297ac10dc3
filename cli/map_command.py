"""`fu-fast map`: mappability of two models' layers, or of a sweep's width series (fu_fast.analysis.mapping)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from fu_fast.analysis.settings import DEFAULTS
from fu_fast.atomic import check_writable_dir
from fu_fast.errors import FuFastError

from .console import ProgressBar, err, out, user_errors

MAPPING_FILE = "mapping.json"
INPUT_OPTIONS = ("input_dim", "input_size", "in_channels")   # build options that decide what a model reads
LOADED_MODELS = 3


@user_errors
def map_command(
    thin: Path = typer.Argument(..., metavar="THIN|SWEEP_DIR",
                                help="the thin model (a run directory of fu-fast train, or a .pt file), or a sweep "
                                     "directory: every pair of neighbouring widths and of trials"),
    wide: Optional[Path] = typer.Argument(None, metavar="[WIDE]",
                                          help="the wide model (a run directory or a .pt file) of the same family; "
                                               "none with a sweep directory"),
    out_dir: Path = typer.Option(..., "--out", help="directory for mapping.json and the figures"),
    data: Optional[str] = typer.Option(None, help="synthetic, cifar10, imagenet or digits [default: the thin "
                                                  "model's run's]"),
    data_dir: Optional[Path] = typer.Option(None, help="data location [default: the run's]"),
    split: Optional[str] = typer.Option(None, help="train, val or test [default: test; a sweep member's: its "
                                                   "analysis split]"),
    limit: Optional[int] = typer.Option(None, help="map on the first N examples only [default: all; a sweep "
                                                   "member's: its analysis limit]"),
    layers: Optional[List[str]] = typer.Option(None, "--layers", help="a layer of both models, or "
                                                                      "THIN_LAYER=WIDE_LAYER (repeatable) [default: "
                                                                      "the analysis layers both have]"),
    sample_cap: int = typer.Option(DEFAULTS.sample_cap, help="most sampled positions per conv layer pair"),
    ridge: float = typer.Option(1e-6, help="ridge term relative to the mean variance of the regressors' units"),
    seed: int = typer.Option(0, help="seed of the position samples"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N [default: cuda if usable]"),
    batch_size: Optional[int] = typer.Option(None, help="rows per batch (results do not depend on it)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no table, no progress"),
) -> None:
    """How much of each layer a linear map from the other model's layer explains (ridge R^2 per unit,
    linear CKA, principal directions spanned), in one pass over the data per pair of models.

    THIN WIDE: two checkpoints of one model family. SWEEP_DIR alone: every pair of neighbouring widths
    (same trial) and every pair of trials (same width) of each series, members not done skipped.
    """
    import torch

    from fu_fast.analysis import mapping
    from fu_fast.devices import resolve_device
    from fu_fast.report.figures import save_figure

    check_writable_dir(out_dir)
    if limit is not None and limit < 1:
        raise FuFastError(f"--limit must be a positive number of examples, got {limit}")
    if batch_size is not None and batch_size < 1:
        raise FuFastError(f"--batch-size must be positive, got {batch_size}")
    pairs_of_layers = _layer_pairs(layers)
    target = resolve_device(device)
    sweep = mapping.is_sweep(thin)
    if sweep and wide is not None:
        raise FuFastError(f"{thin} is a sweep directory: give it alone (its series give the pairs), not with {wide}")
    if not sweep and wide is None:
        if thin.is_dir() and not (thin / "model.pt").exists() and not (thin / "checkpoint.pt").exists():
            raise FuFastError(f"{thin} is neither a run directory nor a sweep directory (no model.pt, no sweep.json)")
        raise FuFastError("say what to map: two checkpoints THIN WIDE of one family, or a sweep directory")

    if sweep:
        jobs, skipped = _sweep_jobs(thin, mapping)
    else:
        jobs, skipped = [(None, None, _Source("THIN", thin), _Source("WIDE", wide))], []
    loaded: dict[Path, tuple] = {}

    def load(source):
        """The model of a source; the last few stay loaded (neighbouring pairs of a sweep share members)."""
        if source.path not in loaded:
            loaded[source.path] = _load(source)
            while len(loaded) > LOADED_MODELS:
                del loaded[next(iter(loaded))]
        return loaded[source.path]

    documents = []
    with ProgressBar(quiet, max(len(jobs), 1), "map") as report:
        for done, (relation, series, a, b) in enumerate(jobs):
            net_a, run_a = load(a)
            net_b, _ = load(b)
            _check_same_family(a, net_a.fu_fast_config, b, net_b.fu_fast_config)
            if relation is None and net_a.fu_fast_config["width"] > net_b.fu_fast_config["width"]:
                err.print(f"warning: THIN {thin} is wider ({net_a.fu_fast_config['width']:g}) than WIDE {wide} "
                          f"({net_b.fu_fast_config['width']:g}): mapped as given", highlight=False, markup=False)
            dataset = _data(net_a.fu_fast_config, run_a, data=data, data_dir=data_dir,
                            split=split or a.split or "test", limit=limit if limit is not None else a.limit)
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size or 128, shuffle=False,
                                                 num_workers=8 if target.type == "cuda" else 0,
                                                 pin_memory=target.type == "cuda")
            try:
                result = mapping.map_layers(net_a.to(target), net_b.to(target), loader, layers=pairs_of_layers,
                                            sample_cap=sample_cap, seed=seed, ridge=ridge, device=target,
                                            labels=(a.label, b.label))
            except FuFastError as e:
                if not sweep:
                    raise
                raise FuFastError(f"{a.label} / {b.label}: {e}") from None
            result.relation = relation or ("seed" if net_a.fu_fast_config["width"] == net_b.fu_fast_config["width"]
                                           else "width")
            result.series = series or net_a.fu_fast_config["name"]
            for side, source in (("a", a), ("b", b)):
                result.models[side].update(source=str(source.path), trial=source.trial)
            documents.append(result.to_dict())
            if report is not None:
                report(done + 1, len(jobs), f"{a.label} / {b.label}")

    mapping.save_document(mapping.mapping_document(documents, skipped), out_dir / MAPPING_FILE)
    figures = []
    for series in dict.fromkeys(d["series"] for d in documents):
        fig = mapping.mapping_figure([d for d in documents if d["series"] == series], f"mappability: {series}")
        if fig is not None:
            name = "mapping" if not sweep else f"mapping-{_file_name(series)}"
            save_figure(fig, out_dir, name)
            figures.append(name)
    if not quiet:
        out.print(_table(documents))
        err.print(f"wrote {out_dir / MAPPING_FILE}" + (f" and {len(figures)} figure(s) (PNG, PDF)" if figures else ""),
                  highlight=False)


class _Source:
    """A model to load: how messages name it, its checkpoint, and its trial when a sweep says it."""

    def __init__(self, label: str, path: Path, member=None):
        self.label, self.path = label, Path(path)
        self.trial = None if member is None else member.trial
        self.split = None if member is None else member.split     # what the sweep analysed the member on
        self.limit = None if member is None else member.limit


def _layer_pairs(layers: list[str] | None):
    if not layers:
        return None
    pairs = []
    for text in layers:
        a, equals, b = text.partition("=")
        if equals and (not a or not b or "=" in b):
            raise FuFastError(f"--layers {text!r}: give a layer of both models, or THIN_LAYER=WIDE_LAYER")
        pairs.append((a, b) if equals else a)
    return pairs


def _sweep_jobs(sweep_dir: Path, mapping) -> tuple[list, list]:
    """(relation, series, A, B) for every pair of done members of the sweep, and the skipped pairs."""
    members = mapping.sweep_members(sweep_dir)
    jobs, skipped, said = [], [], set()
    for relation, a, b in mapping.sweep_pairs(members):
        pending = [m for m in (a, b) if not m.done]
        if pending:
            for member in pending:
                if member.id not in said:
                    said.add(member.id)
                    err.print(f"skipping {member.id}: not done (no analysis.json yet)", highlight=False, markup=False)
            skipped.append({"relation": relation, "series": a.series, "a": a.id, "b": b.id,
                            "reason": "not done: " + ", ".join(m.id for m in pending)})
            continue
        jobs.append((relation, a.series, _Source(a.id, a.weights, a), _Source(b.id, b.weights, b)))
    if not jobs:
        raise FuFastError(f"{sweep_dir} has no pair of done members to map (neighbouring widths or trials of a "
                          f"series)" + (f"; {len(said)} member(s) not done" if said else ""))
    return jobs, skipped


def _load(source: _Source):
    from fu_fast.train import load_model, read_run

    try:
        net, _ = load_model(source.path)
        run = read_run(source.path if source.path.is_dir() else source.path.parent)
    except FuFastError as e:
        raise FuFastError(f"{source.label}: {e}") from None
    return net, run


def _check_same_family(a: _Source, config_a: dict, b: _Source, config_b: dict) -> None:
    if config_a["name"] != config_b["name"]:
        raise FuFastError(f"the models are of different families: {a.label} is {config_a['name']}, {b.label} is "
                          f"{config_b['name']}; map two widths or seeds of one model")
    for option in INPUT_OPTIONS:
        if config_a["options"].get(option) != config_b["options"].get(option):
            raise FuFastError(f"{a.label} and {b.label} read different inputs ({option} "
                              f"{config_a['options'].get(option)} vs {config_b['options'].get(option)}): "
                              f"they cannot be mapped on the same data")


def _data(config: dict, run, *, data, data_dir, split, limit):
    """The evaluation data of the thin model, as `fu-fast analyze` makes it (fu_fast.data.for_analysis)."""
    from fu_fast import data as data_lib

    return data_lib.for_analysis(config, trained=run["settings"] if run else None, name=data, split=split,
                                 data_dir=str(data_dir) if data_dir else None, limit=limit)


def _file_name(series: str) -> str:
    from fu_fast.sweep.config import folder_name

    return folder_name(series.replace("/", "-"))


def _table(documents: list[dict]) -> Table:
    table = Table(title="mappability (B's units explained by A; A's by B)")
    for column in ("A", "B", "layer", "units", "CKA", "mean R² B|A", "share B|A", "spanned B|A", "mean R² A|B"):
        table.add_column(column, justify="left" if column in ("A", "B", "layer") else "right")

    def number(value):
        return "-" if value is None else f"{value:.3f}"

    def model(record):   # short: width and trial (the document has the full label and source)
        width = "" if record.get("width") is None else f"x{record['width']:g}"
        trial = "" if record.get("trial") is None else f" t{record['trial']}"
        return (width + trial).strip() or record["label"]

    for document in documents:
        a, b = model(document["models"]["a"]), model(document["models"]["b"])
        for layer in document["layers"]:
            name = layer["a"] if layer["a"] == layer["b"] else f"{layer['a']}={layer['b']}"
            forward, backward = layer["b_from_a"], layer["a_from_b"]
            spanned = f"{forward['directions']['spanned']}/{forward['directions']['components']}"
            table.add_row(a, b, name, f"{layer['units']['a']}/{layer['units']['b']}", number(layer["cka"]),
                          number(forward["mean_r2"]), number(forward["variance_share"]), spanned,
                          number(backward["mean_r2"]))
    return table
