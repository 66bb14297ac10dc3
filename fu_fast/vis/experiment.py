"""The paper's interpretability experiment (its Table 2): thin vs wide model, per layer.

For each analysed layer, ``units`` random units (channels) of each model are visualised
(fu_fast.vis.render), each image is scored by its total variation in pixel and in frequency
space (fu_fast.vis.score), and the thin model's scores are compared with the wide model's by the
one-sided rank-based permutation test (fu_fast.vis.stats). Written into OUT_DIR, all atomically:

    OUT_DIR/visualize.json          the result document (schema fu-fast/visualize/1), written last
    OUT_DIR/table2.md               the per-layer p values and mean effects, as the paper's Table 2
    OUT_DIR/grids/thin_LAYER.png    the visualised units of each model and layer
    OUT_DIR/grids/wide_LAYER.png

Every input is checked before anything is computed or written, so a user error leaves no file.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .. import __version__, models
from ..atomic import write_atomic
from ..devices import resolve_device
from ..errors import FuFastError, integer_setting
from ..hooks import forward_hooks
from .grid import write_grid
from .render import OBJECTIVES, COLOR_CORRELATION_SQRT, Transforms, visualize
from .score import frequency_total_variation, total_variation
from .stats import ALTERNATIVES, SHUFFLINGS, permutation_test

SCHEMA = "fu-fast/visualize/1"
RESULT_FILE, TABLE_FILE, GRID_DIR = "visualize.json", "table2.md", "grids"
SPACES = ("pixel", "frequency")


@dataclass
class Subject:
    """One of the two compared models: the network, where it came from, its training data."""
    label: str            # "thin" or "wide"
    model: nn.Module
    source: str           # checkpoint path, or "untrained"
    data: str             # "cifar10" or "imagenet": which input normalisation the model expects

    @property
    def config(self) -> dict:
        return self.model.fu_fast_config

    def record(self) -> dict:
        c = self.config
        return {"name": c["name"], "width": c["width"], "options": c["options"], "source": self.source,
                "data": self.data, "parameters": models.parameter_count(self.model)}


def load_subject(label: str, checkpoint: str | Path | None = None, *, model: str | None = None,
                 width: float | None = None, seed: int = 0) -> Subject:
    """A trained model from ``checkpoint`` (run directory or .pt file), or zoo model ``model`` at
    ``width``, untrained, its weights drawn with ``seed``."""
    from ..train import load_model, read_run

    run = None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        net, _ = load_model(checkpoint, model=model, width=width)
        run = read_run(checkpoint if checkpoint.is_dir() else checkpoint.parent)
        source = str(checkpoint)
    else:
        if model is None:
            raise FuFastError(f"say which {label} model to visualise: a checkpoint, or --model with a width")
        torch.manual_seed(seed)   # an untrained model: the same weights in every run
        net = models.build(model, 1.0 if width is None else width)
        source = "untrained"
    name = net.fu_fast_config["name"]
    data = (run or {}).get("settings", {}).get("data") or models.entry(name).training["data"]
    if data not in ("cifar10", "imagenet"):
        raise FuFastError(f"feature visualisation needs an image model; {name} takes {data or 'no image'} inputs")
    return Subject(label, net, source, data)


def normalization(data: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input normalisation of the data a model was trained on."""
    if data == "cifar10":
        from ..data.cifar10 import MEAN, STD
    else:
        from ..data.imagenet import MEAN, STD
    return tuple(MEAN), tuple(STD)


def _layer_channels(subject: Subject, layers: Sequence[str], image_size: int, device: torch.device) -> dict[str, int]:
    """Units (channels or features) of each layer, from one forward pass at ``image_size``; this
    also checks that the model takes images of that size and that each layer outputs a tensor."""
    modules = dict(subject.model.named_modules())
    shapes: dict[str, tuple] = {}

    def hook(name):
        def record(_module, _inputs, output):
            if isinstance(output, torch.Tensor):
                shapes[name] = tuple(output.shape)
        return record

    try:
        with torch.no_grad(), forward_hooks([(modules[name], hook(name)) for name in layers]):
            subject.model(torch.zeros(1, 3, image_size, image_size, device=device))
    except RuntimeError as e:
        raise FuFastError(f"{subject.label} model {subject.config['name']} cannot take {image_size}x{image_size} "
                          f"images: {str(e).splitlines()[0][:200]}") from None
    channels = {}
    for name in layers:
        shape = shapes.get(name)
        if shape is None or len(shape) not in (2, 4):
            raise FuFastError(f"layer {name!r} of the {subject.label} model does not output a (N, C) or "
                              f"(N, C, H, W) tensor")
        channels[name] = shape[1]
    return channels


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def check_settings(*, units=8, steps=256, shufflings=SHUFFLINGS, batch_size=None, lr=0.05, objective="mean",
                   alternative="greater", image_size=None) -> None:
    """FuFastError for a setting run_experiment cannot use; cheap, so a command can check its
    options before it loads (or builds) two models."""
    for value, what in ((units, "units"), (steps, "steps"), (shufflings, "shufflings")):
        integer_setting(value, what)
    for value, what in ((batch_size, "batch_size"), (image_size, "image_size")):
        if value is not None:
            integer_setting(value, what)
    if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise FuFastError(f"the learning rate must be a positive number, got {lr!r}")
    if objective not in OBJECTIVES:
        raise FuFastError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if alternative not in ALTERNATIVES:
        raise FuFastError(f"unknown alternative {alternative!r}; choose one of {', '.join(ALTERNATIVES)}")


def run_experiment(thin: Subject, wide: Subject, out_dir: str | Path, *, units: int = 8, steps: int = 256,
                   layers: Sequence[str] | None = None, image_size: int | None = None, device: str | None = None,
                   seed: int = 0, lr: float = 0.05, objective: str = "mean", shufflings: int = SHUFFLINGS,
                   alternative: str = "greater", batch_size: int | None = None,
                   progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Visualise, score and test every layer; write the files of the module docstring into
    ``out_dir`` and return the result document. ``alternative="greater"`` tests whether the thin
    model's images have more total variation than the wide model's (mean effect > 1)."""
    started = time.perf_counter()
    c_thin, c_wide = thin.config, wide.config
    if c_thin["name"] != c_wide["name"]:
        raise FuFastError(f"the models are of different families: thin is {c_thin['name']}, wide is "
                          f"{c_wide['name']}; compare two widths of one model")
    check_settings(units=units, steps=steps, shufflings=shufflings, batch_size=batch_size, lr=lr,
                   objective=objective, alternative=alternative, image_size=image_size)
    image_size = integer_setting(image_size if image_size is not None else c_thin["options"]["input_size"],
                               "image_size")
    defaults = models.analysis_layers(thin.model)
    layers = list(dict.fromkeys(layers)) if layers else defaults
    for subject in (thin, wide):
        modules = dict(subject.model.named_modules())
        unknown = [name for name in layers if not name or name not in modules]
        if unknown:
            raise FuFastError(f"unknown layer {unknown[0]!r} of {subject.config['name']}; its analysis layers are "
                              f"{', '.join(defaults)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FuFastError(f"--out {out_dir} is a file, not a directory")
    target = resolve_device(device)
    for subject in (thin, wide):
        subject.model.to(target).eval()
    channels = {s.label: _layer_channels(s, layers, image_size, target) for s in (thin, wide)}

    per_call = {s.label: {name: math.ceil(min(units, channels[s.label][name]) / (batch_size or units)) * steps
                          for name in layers} for s in (thin, wide)}
    total = sum(sum(v.values()) for v in per_call.values())
    done = 0
    records, rendered = [], []
    for li, name in enumerate(layers):
        record = {"name": name}
        scores = {}
        for mi, subject in enumerate((thin, wide)):
            available = channels[subject.label][name]
            chosen = sorted(np.random.default_rng(_seed(seed, li, mi)).choice(available, min(units, available),
                                                                              replace=False).tolist())
            mean, std = normalization(subject.data)
            base = done

            def on_step(k, base=base, note=f"{subject.label} {name}"):
                if progress is not None:
                    progress(base + k, total, note)

            vis = visualize(subject.model, name, chosen, steps=steps, image_size=image_size, lr=lr,
                            seed=_seed(seed, li, mi, 1), mean=mean, std=std, objective=objective,
                            device=target, batch_size=batch_size, on_step=on_step)
            done = base + per_call[subject.label][name]
            pixel, frequency = total_variation(vis.images), frequency_total_variation(vis.images)
            scores[subject.label] = {"pixel": pixel, "frequency": frequency}
            record[subject.label] = {
                "channels": available, "units": chosen,
                "start_activation": vis.start_activation, "final_activation": vis.final_activation,
                # A unit silent on the grey start image gets no gradient through its ReLU and can
                # stay silent: its image is then left near grey (low TV). Counted, not hidden.
                "silent_units": sum(a <= 0 for a in vis.final_activation),
                "tv_pixel": pixel.tolist(), "tv_frequency": frequency.tolist(),
                "grid": f"{GRID_DIR}/{subject.label}_{name}.png"}
            rendered.append((subject, name, vis))
        for si, space in enumerate(SPACES):
            result = permutation_test(scores["thin"][space], scores["wide"][space], shufflings=shufflings,
                                      alternative=alternative, seed=_seed(seed, li, 2, si))
            record[space] = {"p_value": result.p_value, "mean_effect": result.mean_effect,
                             "thin_mean": result.first_mean, "wide_mean": result.second_mean,
                             "u_statistic": result.statistic}
        records.append(record)
    document = {
        "schema": SCHEMA,
        "models": {"thin": thin.record(), "wide": wide.record()},
        "settings": {
            "units": units, "steps": steps, "image_size": image_size, "lr": lr, "optimizer": "adam",
            "objective": objective, "parameterization": "fourier_decorrelated",
            "color_correlation_sqrt": [list(row) for row in COLOR_CORRELATION_SQRT],
            "transforms": Transforms().to_dict(), "shufflings": shufflings, "alternative": alternative,
            "statistic": "mann_whitney_u", "seed": seed, "device": str(target), "batch_size": batch_size,
        },
        "layers": records,
        "timing": {"seconds": time.perf_counter() - started},
        "build": {"version": __version__},
    }
    for subject, name, vis in rendered:
        c = subject.config
        write_grid(out_dir / GRID_DIR / f"{subject.label}_{name}.png", vis.images.numpy(), vis.units,
                   f"{subject.label}: {c['name']} x{c['width']:g}, {name}")
    write_atomic(out_dir / TABLE_FILE, markdown_table(document))
    write_atomic(out_dir / RESULT_FILE, json.dumps(document, indent=1) + "\n")
    return document


def _fmt_p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _fmt_effect(e: float | None) -> str:
    return "-" if e is None else f"{e:.3f}"


def markdown_table(document: dict) -> str:
    """Table 2 of the paper: per layer, the p value and mean effect (thin mean / wide mean) of the
    total variation in pixel and in frequency space."""
    thin, wide, s = document["models"]["thin"], document["models"]["wide"], document["settings"]
    sign = ">" if s["alternative"] == "greater" else "<"
    lines = [
        f"# Total variation of feature visualisations: {thin['name']} x{thin['width']:g} (thin) vs "
        f"x{wide['width']:g} (wide)",
        "",
        f"thin: {thin['source']}; wide: {wide['source']}. {s['units']} random units per layer and model, "
        f"{s['steps']} steps at {s['image_size']}x{s['image_size']}, objective: {s['objective']} of the unit's "
        f"post-ReLU map. One-sided rank-based permutation test (H1: thin {sign} wide), {s['shufflings']:,} "
        f"shufflings; mean effect = thin mean / wide mean.",
        "",
        "| layer | p (pixel) | mean effect (pixel) | p (frequency) | mean effect (frequency) |",
        "|---|---:|---:|---:|---:|",
    ]
    for layer in document["layers"]:
        pixel, frequency = layer["pixel"], layer["frequency"]
        lines.append(f"| {layer['name']} | {_fmt_p(pixel['p_value'])} | {_fmt_effect(pixel['mean_effect'])} | "
                     f"{_fmt_p(frequency['p_value'])} | {_fmt_effect(frequency['mean_effect'])} |")
    return "\n".join(lines) + "\n"
