"""The one pass over the data (docs/definitions.md; README, "How it is fast").

Per batch and analysed layer, forwards in which a hook replaces the layer's output by its
K-fold masked expansion: the part of the model before the layer runs on B rows, the part
after it on K*B rows (K chunked to a memory budget). The first layer computed also carries
the base forward: its expansion starts with the unmasked rows, which give the base labels y0,
and every layer's hook feeds its covariance from its unmasked rows (the sampled positions
only). So the part before a layer runs once per layer and batch, never twice. After the last
batch, agreement counts become curves and prunable fractions, and the covariances become
components, redundant units and |r| quantiles; a NaN or infinity is found in the moments.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .. import kernels
from ..devices import resolve_device
from ..hooks import forward_hooks
from ..errors import FuFastError, integer_setting
from . import ablation, layers as layer_lib, masks, noise as noise_lib, orders as order_lib, pca
from .covariance import CovarianceAccumulator, PositionSample
from .inputs import Batches
from .outputs import forward_to_logits
from .result import AnalysisResult, LayerResult
from .settings import DEFAULTS, AnalysisSettings

PRECISIONS = ("fp32", "tf32", "bf16")
DEFAULT_CPU_BUDGET = 1 << 30   # bytes for one chunk of masked passes on the CPU
# The CPU's default batch: rows whose expanded pass takes about 64 MiB, at least 16 (measured
# fastest on both cases of benchmarks/bench_cpu.py: about 250 rows for the MLP, 16 for the AlexNet;
# larger passes lose more to the first touch of the copies' buffer than they save per batch).
CPU_PASS_BYTES, CPU_MIN_ROWS = 64 << 20, 16
# Examples of the first batch on which the layers are found and checked (shapes, cut points, where
# the copies of a layer begin): a few forwards per layer, so few rows; the checks compare the model
# on two different inputs, which a handful of examples makes as well as many.
PROBE_ROWS = 4
_DTYPE_NAMES = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}


def analyze(model: nn.Module, data, *, layers: Sequence[str] | None = None,
            tolerance: float = DEFAULTS.tolerance, pca_tolerance: float = DEFAULTS.pca_tolerance,
            repeats: int = DEFAULTS.repeats, levels=DEFAULTS.levels, sample_cap: int = DEFAULTS.sample_cap,
            unit: str = DEFAULTS.unit, seed: int = DEFAULTS.seed, device=None, batch_size: int | None = None,
            precision: str | None = None, channels_last: bool = False,
            memory_budget: int | None = None, model_info: dict | None = None,
            data_info: dict | None = None, trial: int | None = None,
            progress: Callable[[int, int], None] | None = None, distributed: bool | None = None,
            logits: Callable | None = None, token_mask: Callable | None = None,
            orders: Sequence[str] = ("random",), noise_levels: Sequence[float] | None = None) -> AnalysisResult:
    """Prunability, redundancy and correlations of a model's layers, in one pass over data.

    Args:
        model: any module returning (batch, classes) logits, or (batch, tokens, classes) token
            logits (every token is a prediction).
        data: a tensor of inputs, an (inputs, labels) pair, a Dataset or a DataLoader
            (in a fixed order). Labels, when given, give the model's accuracy.
        layers: names of the modules whose outputs are analysed ("module@k": the k-th call of a
            module that runs several times); any module output of shape (B, C), (B, T, D) or
            (B, C, H, W). None: the model's ``analysis_layers``, else the outputs of its blocks
            (ResNet blocks, Inception modules, transformer layers and their feed-forward hidden
            units), else its activation modules that are cut points.
        tolerance: label-agreement tolerance t of the prunable fraction.
        pca_tolerance: share of the variance the kept components may leave unexplained.
        repeats: independent random orders of ablation; the prunable fraction is their max.
        levels: the number of grid points from 0 to 1, or the grid itself.
        sample_cap: at most this many sampled positions per conv layer for redundancy.
        unit: "position" (every element of a conv or token layer's output is a unit), "channel"
            (whole feature maps; a token layer's features at every token) or "auto" (position for
            conv layers, features for token layers).
        seed: determines the masks and the position sample; nothing else is random.
        device: where to run (default: where the model's parameters are).
        batch_size: rows per batch for tensors and Datasets; results do not depend on it.
            Default: on the CPU, rows whose masked copies take about 64 MiB; on a GPU, 128.
        precision: "fp32" (true float32: TF32 off for matrix products and convolutions),
            "tf32" (TF32 tensor cores on a GPU; no effect on the CPU) or "bf16" (autocast to
            bfloat16). Base labels and ablated passes always share it. Default: the model's
            dtype (fp32, or fp64 for a float64 model, which takes no other precision).
        channels_last: run conv layers on NHWC memory (faster on tensor-core GPUs); the
            inputs are converted, the masks and results are the same.
        memory_budget: bytes one chunk of masked passes may use (default 1 GiB on the CPU,
            half the free memory on a GPU).
        model_info, data_info, trial: recorded in the result document as given (default: the
            model's ``fu_fast_config`` and the data set's ``info``, which zoo models and
            fu_fast.data sets carry).
        progress: called with (examples done, examples in all) after each batch.
        distributed: analyse one shard of the data per process and combine (agreement counts
            summed, covariances merged) so every process gets the single-process result.
            Default: when torch.distributed is initialised with more than one process
            (torchrun). The data must then be a tensor or a map-style Dataset.
        logits: a function from the model's output to its (batch, classes) logits, for outputs
            other than a tensor, a tuple or list (the first element), a dict with "logits" or an
            object with ``.logits``, which are found without it.
        token_mask: for token logits, a function from a batch of inputs to a (batch, tokens) bool
            tensor, True for the tokens that count (not padding).
        orders: the ablation orders: "random" (the keyed random orders of the prunable fraction;
            always included) and targeted ones, "activation", "weight_norm", "redundancy",
            "selectivity" and each "<order>_reverse" (fu_fast.analysis.orders). Orders that read
            the data take their statistics from a first pass, so the data is read twice.
        noise_levels: with levels (from 0, increasing, e.g. [0, 0.25, 0.5, 1, 2]), label agreement
            under Gaussian noise of std = level x each unit's std added to the layer, per repeat,
            and the level where it falls to 1 - tolerance (fu_fast.analysis.noise); the units'
            stds come from a first pass.
    """
    settings = AnalysisSettings(tolerance=tolerance, pca_tolerance=pca_tolerance, repeats=repeats, levels=levels,
                                sample_cap=sample_cap, unit=unit, seed=seed)
    orders = order_lib.check_orders(orders)
    noise_levels = noise_lib.check_levels(noise_levels)
    if batch_size is not None:
        batch_size = integer_setting(batch_size, "batch_size")
    if isinstance(layers, str):
        layers = [layers]
    if layers is not None:
        repeated = sorted({name for name in layers if list(layers).count(name) > 1})
        if repeated:   # its agreement counts would be added twice
            raise FuFastError(f"layer {', '.join(repr(n) for n in repeated)} is named more than once")
    device = resolve_device(device if device is not None else _model_device(model))
    dtype = _model_dtype(model)
    precision = _check_precision(precision, dtype)
    _check_parameters(model)
    batches = Batches(data, batch_size)
    group = _process_group(distributed)
    if group is not None:
        batches.shard(dist.get_rank(), dist.get_world_size())

    started = time.perf_counter()
    # On a GPU the kernels' backend is chosen (and proves itself) here, not inside a forward hook.
    kernel_backend = kernels.kernels_for(device)
    was_training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.inference_mode(), _numerics(device, precision), _module_by_module():
            passes, skipped, predictions, correct = _one_pass(model, batches, layers, settings, device, dtype,
                                                              channels_last, memory_budget, progress, logits,
                                                              token_mask, orders, noise_levels, group)
    finally:
        for module, training in was_training.items():
            module.train(training)

    predictions, correct = int(predictions), int(correct)
    if predictions == 0:
        raise FuFastError("token_mask left no token of the data to compare")
    selectivity_labels = "true" if batches.labels_known else "predicted"
    results = {p.layer.name: _layer_result(p, settings, predictions, selectivity_labels) for p in passes}
    record_orders = {"orders": list(orders), "noise_levels": None if noise_levels is None else list(noise_levels)}

    # Zoo models and data sets describe themselves (fu_fast.models, fu_fast.data).
    info = dict(model_info or getattr(model, "fu_fast_config", None) or {})
    model_doc = {"name": info.pop("name", type(model).__name__), "width": info.pop("width", None),
                 "parameters": sum(p.numel() for p in model.parameters()),
                 "accuracy": correct / predictions if batches.labels_known else None,
                 "options": info.pop("options", {})}
    dinfo = dict(data_info or getattr(data, "info", None) or getattr(getattr(data, "dataset", None), "info", None)
                 or {})
    data_doc = {"name": dinfo.pop("name", batches.name), "examples": batches.examples, "predictions": predictions,
                "split": dinfo.pop("split", "given"), "options": dinfo.pop("options", {})}
    record = {**settings.record(), **record_orders, "precision": precision, "device": str(device)}
    return AnalysisResult(
        model=model_doc, data=data_doc, settings=record, layers=results, trial=trial, skipped_layers=skipped,
        timing={"seconds": time.perf_counter() - started, "passes_over_data": batches.passes},
        build={"version": kernels.compiled_version(), "backend": kernels.backend_for(device),
               "kernels": kernel_backend})


@dataclass
class LayerPass:
    """What the pass over the data keeps for one analysed layer; all of it stays on the device."""
    layer: layer_lib.Layer
    plan: masks.MaskPlan
    sample: PositionSample
    moments: CovarianceAccumulator
    counts: torch.Tensor            # examples whose label survived each mask
    # Per class, the sums of each example's unit activations (spatial or token mean) and the
    # examples: class selectivity (pca.selectivity). Sized by the first batch's logits.
    class_sums: torch.Tensor | None = None
    class_counts: torch.Tensor | None = None
    batch_means: torch.Tensor | None = None   # this batch's per-example unit means, float64
    ordered: order_lib.OrderedMasks | None = None   # targeted orders' masks and counts
    element_sums: torch.Tensor | None = None  # per ablation unit, the sum of its activations (activation order)
    feeding: bool = True                      # whether this pass over the data feeds the statistics
    statistics: dict = field(default_factory=dict)   # order statistics known before the data (weight norms)
    noise: noise_lib.NoisePlan | None = None   # noise copies and their counts

    def __post_init__(self) -> None:
        # Where each random mask's agreement goes: made once on the device (chunks slice it).
        self.mask_index = torch.arange(self.plan.num_masks, device=self.counts.device)

    def chunks(self, rows: int, budget: int, first_example: int) -> Iterator[tuple]:
        """(masks, counts, index) per group of masks whose expanded passes over ``rows`` rows fit the
        budget: the random orders' masks, then the targeted orders', then the noise copies (of the
        batch whose first example is ``first_example``); each mask's agreement goes to counts[index]."""
        size = max(1, budget // max(1, rows * self.layer.suffix_bytes_per_row))
        keys, thresholds, index = self.plan.keys, self.plan.thresholds, self.mask_index
        for start in range(0, len(keys), size):
            yield (ablation.Masks(list(thresholds[start:start + size]), keys=list(keys[start:start + size])),
                   self.counts, index[start:start + size])
        if self.ordered is not None:
            ranks, ordered_thresholds, where = self.ordered.mask_table()
            for start in range(0, len(where), size):
                yield (ablation.Masks(ordered_thresholds[start:start + size], ranks=ranks[start:start + size]),
                       self.ordered.counts, where[start:start + size])
        if self.noise is not None:
            keys, scales, where = self.noise.copies()
            for start in range(0, len(where), size):
                yield (noise_lib.NoiseCopies(keys[start:start + size], scales[start:start + size],
                                             self.noise.unit_std, first_example),
                       self.noise.counts, where[start:start + size])

    def feed(self, output: torch.Tensor, first_example: int, rows: int) -> None:
        """Merge the sampled positions of the unmasked rows (the first ``rows``) into the moments,
        and keep each example's unit means for the class sums."""
        if not self.feeding:
            return
        view = self.layer.channels_view(output[:rows])
        self.moments.update(view, self.sample.rows_in_batch(first_example, rows))
        if self.element_sums is not None:   # in the numbering of the ablation units (NCHW, or t*D + d)
            self.element_sums += output[:rows].sum(dim=0, dtype=torch.float64).flatten()
        self.batch_means = view.double() if view.dim() == 2 else \
            view.sum(dim=(2, 3), dtype=torch.float64) / (view.shape[2] * view.shape[3])

    def add_classes(self, classes: torch.Tensor, count: int) -> None:
        """Add this batch's unit means to the sums of their examples' classes; a label outside
        0 .. count-1 (not one of the model's classes) counts nowhere (checked without a sync)."""
        if not self.feeding:
            return
        if self.class_sums is None:
            self.class_sums = torch.zeros(count, self.layer.units, dtype=torch.float64, device=classes.device)
            self.class_counts = torch.zeros(count, dtype=torch.float64, device=classes.device)
        classes = classes.to(self.class_sums.device)
        valid = ((classes >= 0) & (classes < count)).double()
        index = classes.clamp(0, count - 1)
        self.class_sums.index_add_(0, index, self.batch_means * valid[:, None])
        self.class_counts.index_add_(0, index, valid)


def _one_pass(model, batches, layer_names, settings: AnalysisSettings, device, dtype, channels_last, memory_budget,
              progress, logits, token_mask, orders, noise_levels, group) -> tuple[list[LayerPass], list[dict],
                                                                                  torch.Tensor, torch.Tensor]:
    """Per batch, one expanded pass per analysed layer (the first one also yields the base labels
    and every layer's statistics); returns the layers' records, the candidates skipped, the number
    of predictions compared (examples, or tokens) and the count of correct labels. Targeted orders
    that read the data get a first pass for the statistics, and the ablation pass reuses them."""
    passes, skipped = _plan(model, batches, layer_names, settings, device, dtype, channels_last, logits, orders)
    for layer_pass in passes:
        layer_pass.noise = noise_lib.NoisePlan.build(layer_pass.layer.name, noise_levels, settings.repeats,
                                                     settings.seed, device)
    first_pass = order_lib.needs_data(orders) or noise_levels is not None
    forward = forward_to_logits(model, logits)
    if device.type == "cpu":
        # Rows for expanded passes of about CPU_PASS_BYTES: per-batch overheads are small, and the
        # copies' buffer (ablation.ExpansionBuffer) is small enough for its first touch to stay
        # cheap. No result depends on the batch size.
        per_row = max(p.layer.suffix_bytes_per_row * (p.plan.num_masks + 1) for p in passes)
        batches.resize(max(CPU_MIN_ROWS, CPU_PASS_BYTES // max(1, per_row)))
    if first_pass:
        _statistics_pass(forward, batches, passes, device, dtype, channels_last, token_mask)
        batches.passes += 1
        if group is not None:
            _combine_statistics(passes, device)
        _check_finite_statistics(passes)
        for layer_pass in passes:
            layer_pass.feeding = False
            if order_lib.needs_data(orders):
                _rank_orders(layer_pass, batches.examples, device)
            if layer_pass.noise is not None:
                std = np.sqrt(np.clip(np.diag(layer_pass.moments.covariance()), 0.0, None))
                layer_pass.noise.unit_std = torch.from_numpy(
                    order_lib.per_ablation_unit(std, layer_pass.layer)).to(device)
    predictions, correct, output_finite = _ablation_pass(forward, batches, passes, device, dtype, channels_last,
                                                         memory_budget or _default_budget(device), progress,
                                                         token_mask)
    if group is not None:
        _combine_counts(passes, predictions, correct, device)
    if not first_pass:   # this pass fed the statistics (a first pass fed and checked them)
        if group is not None:
            _combine_statistics(passes, device)
        _check_finite_statistics(passes)   # the layers first: they name where a NaN or infinity came from
    if not bool(output_finite):
        raise FuFastError("the model's output contains NaN or infinite values")
    return passes, skipped, predictions, correct


def _ablation_pass(forward, batches, passes: list[LayerPass], device, dtype, channels_last, budget, progress,
                   token_mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pass with the masks (and, unless a first pass did, the statistics); returns the number of
    predictions and of correct labels and whether the base logits were finite, accumulated on the
    device: the loop never waits for the GPU, so data loading, copies and kernels overlap."""
    correct = torch.zeros((), dtype=torch.int64, device=device)
    predictions = torch.zeros((), dtype=torch.int64, device=device)
    output_finite = torch.ones((), dtype=torch.bool, device=device)
    lead = min(passes, key=lambda p: p.layer.position)   # computed first in a forward pass
    first = batches.offset                                # global index of the batch's first example
    buffer = ablation.ExpansionBuffer()
    for x, labels in _device_batches(batches, device, dtype, channels_last):
        rows = x.shape[0]
        base = None
        for layer_pass in [lead] + [p for p in passes if p is not lead]:
            for chunk in layer_pass.chunks(rows, budget, first):
                if base is None:   # the first chunk is the lead's random masks: keyed
                    base, counted, finite, classes = _lead_pass(forward, x, passes, lead, chunk, first, token_mask,
                                                                buffer)
                    output_finite &= finite
                    predictions += counted
                    if labels is not None:
                        correct += _correct(base, labels)
                    _add_classes(passes, base, labels, rows, classes)
                    continue
                _masked_pass(forward, x, base, layer_pass.layer, chunk, buffer)
        first += rows
        if progress is not None:
            progress(first - batches.offset, batches.stop - batches.offset)
    return predictions, correct, output_finite


def _statistics_pass(forward, batches, passes: list[LayerPass], device, dtype, channels_last, token_mask) -> None:
    """The first pass of an analysis with data-dependent orders: every layer's moments, class sums
    and activation sums, from plain forwards."""
    first = batches.offset
    for x, labels in _device_batches(batches, device, dtype, channels_last):
        rows = x.shape[0]
        with forward_hooks([p.layer.hook(_feeder(p, first, rows)) for p in passes]):
            logits = _predictions(forward(x), 1, rows)
        _add_classes(passes, logits.argmax(dim=1), labels, rows, logits.shape[1])
        first += rows


def _feeder(layer_pass: LayerPass, first_example: int, rows: int):
    """The hook feeding a layer's statistics from the unmasked rows of a pass."""
    def hook(_module, _inputs, output):
        layer_pass.feed(output, first_example, rows)
    return hook


def _add_classes(passes: list[LayerPass], base: torch.Tensor, labels, rows: int, classes: int) -> None:
    """Class sums for selectivity, by the data's labels or else the predictions; with one
    prediction per example only."""
    if base.numel() == rows:
        for layer_pass in passes:
            layer_pass.add_classes(labels if labels is not None else base, classes)


def _check_finite_statistics(passes: list[LayerPass]) -> None:
    for layer_pass in passes:
        if not layer_pass.moments.finite():
            raise FuFastError(f"layer '{layer_pass.layer.name}' produced NaN or infinite activations")


def _rank_orders(layer_pass: LayerPass, examples: int, device) -> None:
    """The rank tables of a layer's targeted orders, from the statistics of the first pass."""
    if layer_pass.ordered is None:
        return
    layer = layer_pass.layer
    statistics = dict(layer_pass.statistics)
    element_mean = (layer_pass.element_sums / examples).cpu().numpy()
    statistics["element_mean"] = element_mean
    if layer.kind == "linear":
        statistics["channel_mean"] = element_mean
    elif layer.kind == "token":
        statistics["channel_mean"] = element_mean.reshape(layer.spatial, layer.units).mean(axis=0)
    else:
        statistics["channel_mean"] = element_mean.reshape(layer.units, layer.spatial).mean(axis=1)
    covariance = layer_pass.moments.covariance()
    statistics["mean_abs_r"] = pca.mean_abs_r_per_unit(covariance)
    if layer_pass.class_sums is not None:
        chosen = pca.selectivity(layer_pass.class_sums.cpu().numpy(), layer_pass.class_counts.cpu().numpy())
        if chosen is not None:
            statistics["selectivity"] = np.array([np.nan if v is None else v for v in chosen.values])
    layer_pass.ordered.ranks = order_lib.rank_table(layer_pass.ordered.orders, layer, statistics, device)


def _correct(base: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How many base labels equal the true ones (a (B, T) label per token for token logits)."""
    if labels.numel() != base.numel():
        raise FuFastError(f"the data has {labels.numel()} labels for a batch whose model output makes "
                          f"{base.numel()} predictions")
    return (base == labels.reshape(-1).to(base.device)).sum()


def _plan(model, batches, layer_names, settings: AnalysisSettings, device, dtype, channels_last,
          logits, orders) -> tuple[list[LayerPass], list[dict]]:
    """The analysed layers, checked on the first batch, with their masks and position samples."""
    probe = _prepare(batches.first(), device, dtype, channels_last)
    try:
        names = list(layer_names) if layer_names is not None else None
        analysed, skipped = layer_lib.resolve(model, probe[:PROBE_ROWS], names,
                                              settings.unit, logits)
    except FuFastError:
        raise
    except Exception as e:  # the model itself failed on the probe batch
        raise FuFastError(f"the model failed on the data: {type(e).__name__}: {e}") from None
    forward = forward_to_logits(model, logits)
    passes = []
    for layer in analysed:
        plan = masks.MaskPlan.build(layer.name, layer.ablation_units, settings.grid, settings.repeats, settings.seed)
        cap = settings.sample_cap if layer.kind != "linear" else None
        sample = PositionSample(batches.examples, layer.spatial, cap, masks.sampling_seed(settings.seed, layer.name),
                                device)
        layer_pass = LayerPass(layer, plan, sample, CovarianceAccumulator(layer.units, device),
                               torch.zeros(plan.num_masks, dtype=torch.int64, device=device))
        layer_pass.ordered = order_lib.OrderedMasks.build(orders, layer.ablation_units, settings.grid, device)
        if layer_pass.ordered is not None:
            layer_pass.element_sums = torch.zeros(layer.units * layer.spatial, dtype=torch.float64, device=device)
            if any(o.startswith("weight_norm") for o in orders):
                channel, element = order_lib.outgoing_weight_norms(model, layer, forward, probe[:PROBE_ROWS])
                layer_pass.statistics.update(weight_norm=channel, element_weight_norm=element)
            if not order_lib.needs_data(orders):
                layer_pass.ordered.ranks = order_lib.rank_table(layer_pass.ordered.orders, layer,
                                                                layer_pass.statistics, device)
        passes.append(layer_pass)
    return passes, skipped


def _lead_pass(forward, x, passes: list[LayerPass], lead: LayerPass, chunk, first_example: int,
               token_mask, buffer: ablation.ExpansionBuffer | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The pass of the first computed layer, with the base forward folded in: its first copy is
    the unmasked batch (a mask of threshold 0 ablates nothing), so the part before the copies
    runs once for both and the base labels come out of the same pass; every layer's hook feeds
    its moments from the unmasked rows. Returns the base labels (-1 where ``token_mask`` leaves a
    token out), the number of predictions compared, whether the base logits are finite, and the
    number of classes."""
    rows = x.shape[0]
    chunk_masks, counts, index = chunk
    with_base = ablation.Masks([0, *chunk_masks.thresholds], keys=[0, *chunk_masks.keys])

    with _layer_errors(lead.layer.name):
        logits = _predictions(ablation.masked_forward(forward, lead.layer, x, with_base,
                                                      [p.layer.hook(_feeder(p, first_example, rows)) for p in passes],
                                                      buffer),
                              len(with_base), rows)
        tokens = logits.shape[0] // (len(with_base) * rows)
        base = logits[:rows * tokens].argmax(dim=1)
        counted = torch.full((), rows * tokens, dtype=torch.int64, device=x.device)
        if token_mask is not None:
            kept = _token_mask(token_mask, x, rows, tokens)
            base = base.masked_fill(~kept, -1)   # never an argmax: a padding token never agrees
            counted = kept.sum()
        counts.index_add_(0, index, kernels.label_agreement(logits[rows * tokens:], base, len(chunk_masks)))
    return base, counted, torch.isfinite(logits[:rows * tokens]).all(), logits.shape[1]


def _masked_pass(forward, x, base: torch.Tensor, layer: layer_lib.Layer, chunk,
                 buffer: ablation.ExpansionBuffer | None = None) -> None:
    """One forward with the layer's output replaced by a chunk's masked copies; their agreement
    counts are added where the chunk says."""
    chunk_masks, counts, index = chunk
    with _layer_errors(layer.name):
        logits = _predictions(ablation.masked_forward(forward, layer, x, chunk_masks, buffer=buffer),
                              len(chunk_masks), x.shape[0])
        counts.index_add_(0, index, kernels.label_agreement(logits, base, len(chunk_masks)))


def _predictions(logits: torch.Tensor, copies: int, rows: int) -> torch.Tensor:
    """The (predictions, classes) logits of ``copies`` copies of a batch of ``rows`` examples:
    (N, C) as they are, and (N, T, C) token logits with every token a prediction."""
    if logits.shape[0] != copies * rows:   # the kernels would read past the logits
        raise FuFastError(f"the model returned {logits.shape[0]} rows of logits for {copies} copies of {rows} "
                          f"examples; expected {copies * rows} (the part after the layer must keep examples apart)")
    return logits.flatten(0, 1) if logits.dim() == 3 else logits


def _token_mask(token_mask, x: torch.Tensor, rows: int, tokens: int) -> torch.Tensor:
    """The (B*T,) bool mask of the predictions that count, from ``token_mask(inputs)``."""
    kept = token_mask(x)
    if not isinstance(kept, torch.Tensor) or tuple(kept.shape) != (rows, tokens):
        shape = tuple(kept.shape) if isinstance(kept, torch.Tensor) else type(kept).__name__
        raise FuFastError(f"token_mask must return a (batch, tokens) = ({rows}, {tokens}) tensor, got {shape}")
    return kept.to(device=x.device, dtype=torch.bool).flatten()


@contextlib.contextmanager
def _layer_errors(name: str) -> Iterator[None]:
    """A failure inside a masked pass, named by its layer (a kernel's own failure as such)."""
    try:
        yield
    except FuFastError as e:
        raise type(e)(f"the masked pass at layer '{name}': {e}") from None
    except RuntimeError as e:
        raise FuFastError(f"the masked pass at layer '{name}' failed ({e}); the part of the model after it "
                          "must accept a batch of any size") from None


def _layer_result(layer_pass: LayerPass, settings: AnalysisSettings, predictions: int,
                  selectivity_labels: str) -> LayerResult:
    """Curves, prunable fraction, redundancy and correlations of one layer."""
    layer, plan = layer_pass.layer, layer_pass.plan
    curves = plan.curves(layer_pass.counts.cpu().numpy(), predictions)
    covariance = layer_pass.moments.covariance()
    try:
        red = pca.redundancy(covariance, settings.pca_tolerance)
    except ValueError as e:
        raise FuFastError(f"layer '{layer.name}': {e}") from None
    corr = pca.correlation(covariance)
    chosen = None
    if layer_pass.class_sums is not None:
        chosen = pca.selectivity(layer_pass.class_sums.cpu().numpy(), layer_pass.class_counts.cpu().numpy())
    return LayerResult(
        name=layer.name, kind=layer.kind, units=layer.units, ablation_units=layer.ablation_units, curves=curves,
        prunable_fraction=max(ablation.prunable_fraction(settings.grid, c, settings.tolerance) for c in curves),
        samples=layer_pass.moments.samples, components=red.components, redundant_units=red.redundant_units,
        explained_variance_ratio=red.explained_variance_ratio, mean_abs_r=corr.mean_abs_r,
        abs_r_quantiles=corr.abs_r_quantiles, abs_r_histogram=corr.abs_r_histogram, unit=layer.unit,
        expanded_at=layer.expansion_point, components_80=red.components_for(pca.REPORTED_SHARE),
        similar_units=corr.similar_units,
        selectivity=None if chosen is None else {"labels": selectivity_labels, "units": chosen.units,
                                                 "mean": chosen.mean, "quantiles": chosen.quantiles},
        orders=None if layer_pass.ordered is None else {
            order: {"curve": curve, "prunable_fraction": ablation.prunable_fraction(settings.grid, curve,
                                                                                   settings.tolerance)}
            for order, curve in layer_pass.ordered.curves(predictions).items()},
        noise=None if layer_pass.noise is None else _noise_record(layer_pass.noise, settings, predictions))


def _noise_record(plan: noise_lib.NoisePlan, settings: AnalysisSettings, predictions: int) -> dict:
    curves = plan.curves(predictions)
    return {"levels": list(plan.levels), "curves": curves,
            "tolerance_level": max(noise_lib.tolerance_level(plan.levels, c, settings.tolerance) for c in curves)}


def _device_batches(batches, device: torch.device, dtype, channels_last: bool
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """The batches on the device, ready for the model. On a GPU, batch i+1 is copied from
    pinned memory on a side stream while batch i is computed."""
    if device.type != "cuda":
        for inputs, labels in batches:
            yield _prepare(inputs, device, dtype, channels_last), None if labels is None else labels.to(device)
        return
    compute, copy = torch.cuda.current_stream(device), torch.cuda.Stream(device)

    def upload(tensor):
        if tensor is None or tensor.device == device:
            return tensor
        return (tensor if tensor.is_pinned() else tensor.pin_memory()).to(device, non_blocking=True)

    def stage(inputs, labels):
        with torch.cuda.stream(copy):
            x, y = upload(inputs), upload(labels)
        return x, y, copy.record_event()

    pending = None
    for inputs, labels in batches:
        staged = stage(inputs, labels)
        if pending is not None:
            yield _ready(*pending, compute, dtype, channels_last)
        pending = staged
    if pending is not None:
        yield _ready(*pending, compute, dtype, channels_last)


def _ready(x, labels, copied, compute, dtype, channels_last):
    compute.wait_event(copied)
    # The copies were allocated on the side stream: tell the caching allocator they are used
    # on the compute stream too, so their memory is not reused too early.
    for tensor in (x, labels):
        if tensor is not None:
            tensor.record_stream(compute)
    return _prepare(x, x.device, dtype, channels_last), labels


@contextlib.contextmanager
def _numerics(device: torch.device, precision: str):
    """The numeric precision of every forward pass: TF32 switches, or autocast to bfloat16."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    # PyTorch lets cuDNN convolutions use TF32 by default; "fp32" means float32 throughout.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        if precision == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@contextlib.contextmanager
def _module_by_module():
    """PyTorch's fused transformer fast path runs an encoder layer as one kernel in eval mode, so
    the hooks on its submodules would never fire: it is off during an analysis, then restored."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    enabled = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(enabled)


def _process_group(distributed: bool | None):
    """Whether to combine over torch.distributed's default group (None: when there is one)."""
    running = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and not running:
        raise FuFastError("distributed analysis needs torch.distributed initialised with more than one "
                          "process (run under torchrun)")
    return dist.group.WORLD if (running if distributed is None else distributed) else None


def _combine_counts(passes: list[LayerPass], predictions: torch.Tensor, correct: torch.Tensor,
                    device: torch.device) -> None:
    """Sum the agreement counts, predictions and correct labels over processes (in place)."""
    counts = [p.counts for p in passes] + [p.ordered.counts for p in passes if p.ordered is not None]
    summed = _all_reduce(torch.cat(counts + [predictions.reshape(1), correct.reshape(1)]), device)
    for tensor, part in zip(counts, summed[:-2].split([len(c) for c in counts])):
        tensor.copy_(part)
    predictions.copy_(summed[-2])
    correct.copy_(summed[-1])


def _combine_statistics(passes: list[LayerPass], device: torch.device) -> None:
    """Merge the covariances in rank order, so every process ends with the same moments, and sum
    the class and activation sums (in place)."""
    comm = _comm_device(device)
    for layer_pass in passes:
        moments = layer_pass.moments
        state = moments.state().to(comm)
        gathered = [torch.empty_like(state) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, state)
        merged = CovarianceAccumulator(moments.mean.numel())
        for other in gathered:
            merged.merge_state(other.cpu())
        moments.count, moments.mean, moments.comoment = (t.to(moments.mean.device) for t in
                                                         (merged.count, merged.mean, merged.comoment))
        # Every process saw a batch, so every one has the class sums when any has.
        for tensor in (layer_pass.class_sums, layer_pass.class_counts, layer_pass.element_sums):
            if tensor is not None:
                tensor.copy_(_all_reduce(tensor, device))


def _comm_device(device: torch.device) -> torch.device:
    # NCCL communicates GPU tensors; gloo, CPU ones.
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def _all_reduce(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    summed = tensor.to(_comm_device(device))
    dist.all_reduce(summed)
    return summed.to(tensor.device)


def _prepare(inputs: torch.Tensor, device, dtype, channels_last: bool = False) -> torch.Tensor:
    x = inputs.to(device, non_blocking=True)
    if x.is_floating_point():
        x = x.to(dtype)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _model_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def _check_parameters(model: nn.Module) -> None:
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        # A finite sum (one pass, no mask tensor) proves every weight finite; only a sum that
        # is not (a NaN or infinity, or an overflow) needs the element-wise check.
        if p.is_floating_point() and not bool(torch.isfinite(p.detach().sum())) \
                and not bool(torch.isfinite(p).all()):
            raise FuFastError(f"the model's weights contain NaN or infinite values (in '{name}')")


def _check_precision(precision: str | None, dtype: torch.dtype) -> str:
    name = _DTYPE_NAMES.get(dtype, str(dtype))
    if precision is None:
        return name
    if precision not in PRECISIONS:
        raise FuFastError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if dtype != torch.float32:
        raise FuFastError(f"precision '{precision}' needs a float32 model; this one is {name}")
    return precision


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free // 2
    return DEFAULT_CPU_BUDGET
