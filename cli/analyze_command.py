"""`fu-fast analyze`: prunability, redundancy and correlations of a model's layers (fu_fast.analyze)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

import fu_fast
from fu_fast.atomic import check_writable_file
from fu_fast.analysis.settings import DEFAULTS, HELP
from fu_fast.errors import FuFastError

from .console import ProgressBar, comma_list, err, out, user_errors
from .data_command import fetch_if_asked


class Unit(str, Enum):
    auto = "auto"
    position = "position"
    channel = "channel"


class Precision(str, Enum):
    fp32 = "fp32"
    tf32 = "tf32"
    bf16 = "bf16"


@user_errors
def analyze(
    model: Optional[str] = typer.Option(None, help="a zoo model (mlp, alexnet, resnet56, resnet18, inception_v3, "
                                                   "...), torchvision:NAME, timm:NAME or package.module:factory "
                                                   "[default: the checkpoint's]"),
    width: Optional[float] = typer.Option(None, help="width factor of a zoo model [default: the checkpoint's; 1 "
                                                     "without one]"),
    checkpoint: Optional[Path] = typer.Option(None, help="a run directory of fu-fast train, or a .pt file"),
    weights: Optional[Path] = typer.Option(None, help="a state dict file for a torchvision:, timm: or factory model, "
                                                      "loaded weights-only and strictly (default: fresh weights)"),
    num_classes: Optional[int] = typer.Option(None, help="output logits (default: the model's; 1000 for "
                                                         "torchvision: and timm:)"),
    data: Optional[str] = typer.Option(None, help="synthetic, cifar10, imagenet or digits [default: the run's]"),
    data_dir: Optional[Path] = typer.Option(None, help="data location [default: the run's]"),
    download: bool = typer.Option(False, "--download", help="cifar10: fetch it into the data directory first if it "
                                                            "is not there (as `fu-fast data cifar10 DIR`)"),
    split: str = typer.Option("test", help="train, val or test (imagenet: val and test are the validation set)"),
    input_dim: Optional[int] = typer.Option(None, help="synthetic data input dimension"),
    image_size: Optional[int] = typer.Option(None, help="image side [default: the model's]"),
    random_labels: Optional[bool] = typer.Option(None, "--random-labels/--true-labels",
                                                 help="labels of the data [default: the run's]"),
    limit: Optional[int] = typer.Option(None, help="analyse only the first N examples"),
    layers: Optional[List[str]] = typer.Option(None, "--layers",
                                               help="layer to analyse (repeatable) [default: the model's]"),
    tolerance: float = typer.Option(DEFAULTS.tolerance, help=HELP["tolerance"]),
    pca_tolerance: float = typer.Option(DEFAULTS.pca_tolerance, help=HELP["pca_tolerance"]),
    repeats: int = typer.Option(DEFAULTS.repeats, help=HELP["repeats"]),
    levels: int = typer.Option(DEFAULTS.levels, help="number of ablation fractions from 0 to 1"),
    sample_cap: int = typer.Option(DEFAULTS.sample_cap, help=HELP["sample_cap"]),
    unit: Unit = typer.Option(DEFAULTS.unit, help=HELP["unit"]),
    orders: Optional[List[str]] = typer.Option(None, "--orders",
                                               help="ablation order (repeatable): random, activation, weight_norm, "
                                                    "redundancy, selectivity, or ORDER_reverse (random is always "
                                                    "included)"),
    noise_levels: Optional[str] = typer.Option(None, help="noise curves at these levels, comma-separated multiples of "
                                                          "each unit's std from 0, e.g. 0,0.5,1,2"),
    seed: int = typer.Option(DEFAULTS.seed, help="seed of the masks, the position sample and an untrained model's "
                                                 "weights"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N [default: cuda if usable; under torchrun, "
                                                    "the local rank's GPU]"),
    batch_size: Optional[int] = typer.Option(None, help="rows per batch (results do not depend on it)"),
    precision: Optional[Precision] = typer.Option(None, help="fp32 (TF32 off), tf32 (GPU tensor cores) or bf16 "
                                                               "(autocast) [default: fp32]"),
    channels_last: bool = typer.Option(False, "--channels-last", help="NHWC memory for conv layers (faster on GPUs)"),
    workers: Optional[int] = typer.Option(None, help="data-loading processes [default: 8 on a GPU, 0 on the CPU]"),
    result_file: Optional[Path] = typer.Option(None, "--out", help="write the JSON result document here"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no table, no progress"),
) -> None:
    """Prunability, redundancy and correlations of a model's layers, in one pass over the data.

    Many GPUs or nodes: run it under torchrun (`torchrun --nproc_per_node 8 -m fu_fast.cli analyze ...`);
    each process analyses a shard of the data and the result equals a single process's.
    """
    import torch


    from fu_fast import data as data_lib
    from fu_fast import models
    from fu_fast.models.external import is_external
    from fu_fast.train import load_model, read_run
    from fu_fast.train.distributed import setup, teardown

    from fu_fast.analysis.inputs import DEFAULT_BATCH_SIZE

    if result_file is not None:
        check_writable_file(result_file)
    # Checked before any model or data is loaded.
    from fu_fast.analysis import noise as noise_lib
    from fu_fast.analysis import orders as order_lib
    order_list = list(order_lib.check_orders(["random", *(o for o in orders or () if o != "random")]))
    noise_list = noise_lib.check_levels(comma_list(noise_levels, float, "--noise-levels takes comma-separated "
                                                                         "numbers, e.g. 0,0.5,1, got "))
    if batch_size is not None and batch_size < 1:
        raise FuFastError(f"--batch-size must be positive, got {batch_size}")
    if workers is not None and workers < 0:
        raise FuFastError(f"--workers must be 0 or more, got {workers}")
    run = None
    if model is not None and is_external(model):
        net = _build_external(model, width=width, checkpoint=checkpoint, weights=weights, num_classes=num_classes,
                              image_size=image_size, input_dim=input_dim, data=data, seed=seed)
    elif weights is not None:
        raise FuFastError("--weights loads a state dict into a torchvision:NAME, timm:NAME or package.module:factory "
                          "model; a zoo model's trained weights come from --checkpoint RUN_DIR")
    elif checkpoint is not None:
        net, _ = load_model(checkpoint, model=model, width=width)
        run = read_run(checkpoint if checkpoint.is_dir() else checkpoint.parent)
        _check_agrees_with_checkpoint(net.fu_fast_config, {"--input-dim": ("input_dim", input_dim),
                                                           "--image-size": ("input_size", image_size),
                                                           "--num-classes": ("num_classes", num_classes)})
    else:
        if model is None:
            raise FuFastError("say which model to analyse: --model (and --checkpoint for trained weights)")
        options = {k: v for k, v in (("input_dim", input_dim), ("input_size", image_size),
                                     ("num_classes", num_classes)) if v is not None}
        if data is not None:   # digits: 64-vectors for an MLP, 1x8x8 images for a conv net
            options = data_lib.fit_model_options(data, model, options)
        torch.manual_seed(seed)   # an untrained model: the same weights in every process and every run
        net = models.build(model, 1.0 if width is None else width, **options)
    settings = run["settings"] if run else {}
    fetch_if_asked(download, data or settings.get("data"), data_dir or settings.get("data_dir"))
    dataset = data_lib.for_analysis(net.fu_fast_config, trained=run["settings"] if run else None, name=data,
                                    split=split, data_dir=str(data_dir) if data_dir else None,
                                    random_labels=random_labels, image_size=image_size, limit=limit)
    # Under torchrun every process analyses a shard of the data (fu_fast.analyze combines them).
    ctx, target = setup(device)
    on_gpu = target.type == "cuda"
    # Decoding images is the bottleneck of a GPU analysis: worker processes and pinned batches
    # let it overlap with the passes (the engine copies batch i+1 while computing batch i).
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size or DEFAULT_BATCH_SIZE, shuffle=False,
                                         num_workers=(8 if on_gpu else 0) if workers is None else workers,
                                         pin_memory=on_gpu)
    try:
        with ProgressBar(quiet or not ctx.main, len(dataset), "analyse") as report:
            result = fu_fast.analyze(net.to(target), loader, layers=layers or None, tolerance=tolerance,
                                     pca_tolerance=pca_tolerance, repeats=repeats, levels=levels,
                                     sample_cap=sample_cap, unit=unit.value, seed=seed, device=target,
                                     orders=order_list, noise_levels=noise_list,
                                     precision=precision.value if precision else None,
                                     channels_last=channels_last, progress=report)
    finally:
        teardown(ctx)
    if not ctx.main:
        return
    if result_file is not None:
        result.save(result_file)
    if not quiet:
        out.print(_layer_table(result))
        if result_file is not None:
            err.print(f"wrote {result_file}", highlight=False)


def _build_external(model: str, *, width, checkpoint, weights, num_classes, image_size, input_dim, data, seed):
    """A torchvision:, timm: or package.module:factory model (fu_fast.models.external)."""
    import torch

    from fu_fast.models.external import build_external

    if checkpoint is not None:
        raise FuFastError(f"--checkpoint holds a fu-fast training run of a zoo model; give {model} its trained "
                          "weights with --weights FILE (a state dict)")
    if width is not None:
        raise FuFastError(f"--width scales the zoo models (mlp, alexnet, resnet56, resnet18, ...), not {model}; "
                          "leave it out")
    torch.manual_seed(seed)   # fresh weights: the same in every process and every run
    net = build_external(model, weights=weights, num_classes=num_classes, image_size=image_size, input_dim=input_dim)
    if data in ("cifar10", "imagenet") and "input_size" not in net.fu_fast_config["options"]:
        raise FuFastError(f"{model} declares no image size: say it with --image-size N for {data} images")
    return net


def _check_agrees_with_checkpoint(config: dict, flags: dict) -> None:
    """Refuse a flag that would describe another model than the checkpoint holds (it would be
    ignored): {flag: (build option, value given or None)}."""
    options = config.get("options", {})
    for flag, (option, value) in flags.items():
        if value is not None and options.get(option) != value:
            recorded = f"{option} {options[option]}" if option in options else f"no {option} option"
            raise FuFastError(f"{flag} {value} contradicts the checkpoint's {config.get('name', 'model')} "
                              f"({recorded}); leave it out")


def _layer_table(result) -> Table:
    m = result.model
    width = "" if m["width"] is None else f" x{m['width']}"   # an external model has no width
    title = (f"{m['name']}{width} ({m['parameters']:,} parameters"
             + (f", accuracy {m['accuracy']:.4f}" if m.get("accuracy") is not None else "") + ")")
    table = Table(title=title)
    for column in ("layer", "kind", "units", "prunable", "prunable units", "redundant units", "mean |r|"):
        table.add_column(column, justify="left" if column in ("layer", "kind") else "right")
    for name, layer in result.layers.items():
        # A dead or constant layer has no correlations (fewer than two units vary).
        mean_abs_r = "dead" if layer.mean_abs_r is None else f"{layer.mean_abs_r:.3f}"
        table.add_row(name, layer.kind, str(layer.units), f"{layer.prunable_fraction:.3f}",
                      f"{layer.prunable_units:,.1f}", str(layer.redundant_units), mean_abs_r)
    return table
