"""Mappability (docs/definitions.md, "Mappability"): how much of one network's layer a linear map
from another network's layer explains, for a thin and a wide member of a width series, or two
seeds of one width.

One pass over the data runs both models on each batch. Hooks gather, for every layer pair, the
rows of the pair's position sample (one sample per pair, the same rows for both layers: their
spatial sizes must match) and merge the C_A + C_B features of those rows into one float64
CovarianceAccumulator. From the joint covariance [[S_AA, S_AB], [S_BA, S_BB]] come, per pair:

* per-unit R^2 of the ridge regression of each unit of B on all units of A (and of A on B),
  its mean and quantiles and the variance-weighted share;
* linear CKA, ||S_AB||_F^2 / (||S_AA||_F ||S_BB||_F);
* of the principal directions needed for 95% of a layer's variance, how many the other layer
  spans with R^2 >= 0.95.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..atomic import write_atomic
from ..devices import resolve_device
from ..errors import FuFastError, integer_setting
from ..hooks import forward_hooks
from . import layers as layer_lib, masks, pca
from .covariance import CovarianceAccumulator, PositionSample
from .engine import (PROBE_ROWS, _check_parameters, _device_batches, _model_device, _model_dtype,
                     _module_by_module, _numerics, _prepare)
from .inputs import Batches
from .outputs import logits_of
from .settings import DEFAULTS

SCHEMA = "fu-fast/mapping/1"
DEFAULT_RIDGE = 1e-6      # lambda = ridge * trace(S_XX) / C_X for a regression on layer X
VARIANCE_SHARE = 0.95     # principal directions: the fewest that explain this share of the variance
SPANNED_R2 = 0.95         # a direction is spanned by the other layer when its R^2 reaches this
QUANTILES = pca.QUANTILES

__all__ = ["SCHEMA", "DEFAULT_RIDGE", "VARIANCE_SHARE", "SPANNED_R2", "Explained", "PairMapping", "MappingResult",
           "map_layers", "pair_mapping", "explained", "linear_cka", "mapping_document", "save_document",
           "spatial_shape", "unit_r2", "SweepMember", "is_sweep", "sweep_members", "sweep_pairs", "mapping_figure"]


@dataclass
class Explained:
    """One layer (the target) explained by a linear map from the other layer (the regressors)."""
    ridge_lambda: float                 # lambda of the ridge regression (ridge * trace / units of the regressors)
    r2: list                            # per target unit; None for a unit with zero variance
    live_units: int                     # target units with non-zero variance
    mean: float | None                  # mean R^2 over the live units
    quantiles: dict | None              # R^2 quantiles over the live units ("0.05" ... "0.95")
    variance_share: float | None        # explained variance / total variance of the target
    components: int                     # k: the target's principal directions for VARIANCE_SHARE of its variance
    spanned: int                        # how many of those k have R^2 >= SPANNED_R2
    direction_r2: list                  # R^2 of each of the k directions, in decreasing order of variance

    def to_dict(self) -> dict:
        return {"lambda": self.ridge_lambda, "live_units": self.live_units, "mean_r2": self.mean,
                "r2_quantiles": self.quantiles, "variance_share": self.variance_share,
                "directions": {"components": self.components, "spanned": self.spanned, "r2": self.direction_r2},
                "r2": self.r2}


@dataclass
class PairMapping:
    """The mapping between layer ``a`` of model A and layer ``b`` of model B."""
    a: str
    b: str
    kind: str                           # linear, conv or token (the same for both)
    units_a: int
    units_b: int
    samples: int                        # rows of the joint covariance (examples, or sampled positions)
    cka: float | None                   # None when either layer has no variance
    b_from_a: Explained
    a_from_b: Explained
    covariance: np.ndarray = field(repr=False, default=None)   # the joint (C_A + C_B)^2 covariance (not saved)

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "kind": self.kind, "units": {"a": self.units_a, "b": self.units_b},
                "samples": self.samples, "cka": self.cka, "b_from_a": self.b_from_a.to_dict(),
                "a_from_b": self.a_from_b.to_dict()}


@dataclass
class MappingResult:
    """The mapping of one pair of models: their records, the data, the settings, one entry per layer pair.
    ``relation`` ("width", "seed" or None) and ``series`` say what the pair is, when the caller knows."""
    models: dict                        # {"a": record, "b": record}
    data: dict
    settings: dict
    layers: list                        # PairMapping, in the order of the pairs
    timing: dict
    relation: str | None = None
    series: str | None = None

    def pair(self, a: str, b: str | None = None) -> PairMapping:
        b = a if b is None else b
        for mapping in self.layers:
            if (mapping.a, mapping.b) == (a, b):
                return mapping
        raise KeyError((a, b))

    def to_dict(self) -> dict:
        """One entry of a mapping document's ``pairs``."""
        return {"relation": self.relation, "series": self.series, "models": self.models, "data": self.data,
                "settings": self.settings, "layers": [m.to_dict() for m in self.layers], "timing": self.timing}

    def document(self) -> dict:
        return mapping_document([self.to_dict()])

    def save(self, path: str | Path) -> Path:
        return save_document(self.document(), path)


def mapping_document(pairs: list[dict], skipped: list[dict] | None = None) -> dict:
    """The mapping document (docs/definitions.md, "Mappability"): schema, pairs, and the pairs or
    members left out with the reason."""
    return {"schema": SCHEMA, "pairs": pairs, "skipped": list(skipped or [])}


def save_document(document: dict, path: str | Path) -> Path:
    try:
        text = json.dumps(document, allow_nan=False)
    except ValueError:
        raise FuFastError("the mapping holds a NaN or infinite number; nothing was written") from None
    return write_atomic(path, text + "\n")


def map_layers(model_a: nn.Module, model_b: nn.Module, data, *, layers=None,
               sample_cap: int = DEFAULTS.sample_cap, seed: int = 0, ridge: float = DEFAULT_RIDGE, device=None,
               batch_size: int | None = None, labels: tuple[str, str] = ("model A", "model B"),
               progress: Callable[[int, int], None] | None = None, logits: Callable | None = None) -> MappingResult:
    """How well each of two models' layers is a linear function of the other's, in one pass.

    Args:
        model_a, model_b: two models taking the same inputs (for a width series: A the thin one).
        data: as for fu_fast.analyze: a tensor, an (inputs, labels) pair, a Dataset or a DataLoader
            in a fixed order. Labels are not used.
        layers: None: the layers both models analyse by default (their analysis_layers, else the
            default layers of fu_fast.analyze), matched by name. Else a list of names present in
            both models, or of (name in A, name in B) pairs.
        sample_cap: at most this many positions per conv or token layer pair (every example of a
            linear layer is used); the same positions for both layers of a pair.
        seed: seed of the position samples (the pair's sample is the one fu_fast.analyze draws for
            A's layer with this seed).
        ridge: relative ridge term: a regression on layer X adds lambda = ridge * trace(S_XX) / C_X
            to the diagonal of S_XX. It must be positive.
        device: where to run (default: where model A's parameters are); both models must be there.
        batch_size: rows per batch for tensors and Datasets (results do not depend on it).
        labels: how error messages and the document name the two models.
        progress: called with (examples done, examples in all) after each batch.
        logits: as for fu_fast.analyze; only the layers' discovery and checks look at the output, and
            without it any tensor output will do (flattened per example when it is not (B, C) or (B, T, C)).
    """
    sample_cap = integer_setting(sample_cap, "sample_cap", least=2)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise FuFastError(f"seed must be an integer, got {seed!r}")
    if isinstance(ridge, bool) or not isinstance(ridge, numbers.Real) or not (0 < ridge < math.inf):
        raise FuFastError(f"ridge must be a positive number, got {ridge!r}")
    if batch_size is not None:
        batch_size = integer_setting(batch_size, "batch_size")
    wanted = _layer_pairs(layers)
    device = resolve_device(device if device is not None else _model_device(model_a))
    for model, label in ((model_a, labels[0]), (model_b, labels[1])):
        where = _model_device(model)
        if any(True for _ in model.parameters()) and (where.type, where.index or 0) != (device.type, device.index or 0):
            raise FuFastError(f"{label}'s weights are on {where}, the mapping runs on {device}: move it there")
        try:
            _check_parameters(model)
        except FuFastError as e:
            raise FuFastError(f"{label}: {e}") from None
    batches = Batches(data, batch_size)
    dtypes = (_model_dtype(model_a), _model_dtype(model_b))

    started = time.perf_counter()
    models = (model_a, model_b)
    was_training = {m: m.training for model in models for m in model.modules()}
    for model in models:
        model.eval()
    try:
        with torch.inference_mode(), _numerics(device, "fp32"), _module_by_module():
            pairs = _plan(models, labels, batches, wanted, dtypes, device, sample_cap, int(seed), logits)
            _one_pass(models, batches, pairs, dtypes, device, progress)
    finally:
        for module, training in was_training.items():
            module.train(training)

    results = []
    for pair in pairs:
        if not pair.moments.finite():
            raise FuFastError(f"layer pair '{pair.a.name}' / '{pair.b.name}' produced NaN or infinite activations")
        covariance = pair.moments.covariance()
        if not np.isfinite(covariance).all():
            raise FuFastError(f"layer pair '{pair.a.name}' / '{pair.b.name}': the activations are too large for "
                              "float64 sums of squares (the covariance overflows)")
        results.append(pair_mapping(covariance, pair.a.units, ridge, a=pair.a.name, b=pair.b.name,
                                    kind=pair.a.kind, samples=pair.moments.samples))
    dinfo = dict(getattr(data, "info", None) or getattr(getattr(data, "dataset", None), "info", None) or {})
    data_doc = {"name": dinfo.pop("name", batches.name), "examples": batches.examples,
                "split": dinfo.pop("split", "given"), "options": dinfo.pop("options", {})}
    settings = {"sample_cap": sample_cap, "seed": int(seed), "ridge": float(ridge), "variance_share": VARIANCE_SHARE,
                "spanned_r2": SPANNED_R2, "device": str(device)}
    return MappingResult(models={"a": _model_record(model_a, labels[0]), "b": _model_record(model_b, labels[1])},
                         data=data_doc, settings=settings, layers=results,
                         timing={"seconds": time.perf_counter() - started, "passes_over_data": batches.passes})


# ------------------------------------------------------------------------------------------ the pass

@dataclass
class _Pair:
    a: layer_lib.Layer
    b: layer_lib.Layer
    sample: PositionSample
    moments: CovarianceAccumulator


def _layer_pairs(layers) -> list[tuple[str, str]] | None:
    if layers is None:
        return None
    if isinstance(layers, (str, tuple)):
        layers = [layers]
    pairs = []
    for item in layers:
        if isinstance(item, str):
            pairs.append((item, item))
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(n, str) for n in item):
            pairs.append((item[0], item[1]))
        else:
            raise FuFastError(f"layers: each is a name present in both models or a (name in A, name in B) pair, "
                              f"not {item!r}")
    if not pairs:
        raise FuFastError("layers is empty: name at least one layer (or pass None for the default layers)")
    repeated = sorted({f"{a}/{b}" for a, b in pairs if pairs.count((a, b)) > 1})
    if repeated:
        raise FuFastError(f"layer pair {', '.join(repeated)} is named more than once")
    return pairs


def _any_output(output) -> torch.Tensor:
    """The model's output as resolve's checks take it: its logits, or any tensor flattened per example."""
    if isinstance(output, torch.Tensor) and output.dim() >= 1 and output.dim() not in (2, 3):
        return output.reshape(output.shape[0], -1)
    return logits_of(output)


def _resolve(model, label: str, probe: torch.Tensor, names: list[str] | None,
             logits: Callable | None) -> dict[str, layer_lib.Layer]:
    try:
        found, _skipped = layer_lib.resolve(model, probe, names, "auto", logits or _any_output)
    except FuFastError as e:
        raise FuFastError(f"{label}: {e}") from None
    except Exception as e:  # the model itself failed on the probe batch
        raise FuFastError(f"{label} failed on the data: {type(e).__name__}: {e}") from None
    return {layer.name: layer for layer in found}


def spatial_shape(layer: layer_lib.Layer) -> tuple[int, ...]:
    """A layer's positions per example as a shape: () linear, (T,) token, (H, W) conv."""
    return {"linear": (), "token": layer.shape[:1], "conv": layer.shape[1:]}[layer.kind]


def _shape_text(layer: layer_lib.Layer) -> str:
    shape = spatial_shape(layer)
    if layer.kind == "linear":
        return "one position per example (a linear layer)"
    if layer.kind == "token":
        return f"{shape[0]} tokens per example"
    return f"{shape[0]}x{shape[1]} positions per example"


def _plan(models, labels, batches: Batches, wanted, dtypes, device, sample_cap: int, seed: int,
          logits) -> list[_Pair]:
    """The layer pairs, checked on the first batch, with their position samples and accumulators."""
    first = batches.first()
    probes = [_prepare(first, device, dtype)[:PROBE_ROWS] for dtype in dtypes]
    if wanted is None:
        found = [_resolve(m, label, probe, None, logits) for m, label, probe in zip(models, labels, probes)]
        wanted = [(name, name) for name in found[0] if name in found[1]]
        if not wanted:
            raise FuFastError(f"{labels[0]} and {labels[1]} share no analysis layer by name "
                              f"({', '.join(found[0])} vs {', '.join(found[1])}): name the pairs of layers")
    else:
        found = [_resolve(m, label, probe, list(dict.fromkeys(names)), logits)
                 for m, label, probe, names in zip(models, labels, probes, zip(*wanted))]
    pairs = []
    for a_name, b_name in wanted:
        a, b = found[0][a_name], found[1][b_name]
        if a.kind != b.kind or spatial_shape(a) != spatial_shape(b):
            raise FuFastError(f"layers '{a_name}' of {labels[0]} ({_shape_text(a)}) and '{b_name}' of {labels[1]} "
                              f"({_shape_text(b)}) cannot be mapped: their spatial sizes must match")
        cap = sample_cap if a.kind != "linear" else None
        sample = PositionSample(batches.examples, a.spatial, cap, masks.sampling_seed(seed, a_name), device)
        pairs.append(_Pair(a, b, sample, CovarianceAccumulator(a.units + b.units, device)))
    return pairs


def _gather(view: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The (R, C) values of a (B, C) or (B, C, H, W) view at flattened positions b * H*W + h * W + w."""
    if view.dim() == 2:
        return view[rows]
    flat = view.flatten(2)                     # (B, C, H*W): a view for NCHW and NHWC memory alike
    spatial = flat.shape[2]
    return flat[rows // spatial, :, rows % spatial]


def _one_pass(models, batches: Batches, pairs: list[_Pair], dtypes, device, progress) -> None:
    """Both models forward on every batch; each pair merges its sampled rows of both layers."""
    captured: list[list[torch.Tensor | None]] = [[None, None] for _ in pairs]
    state = {"first": batches.offset, "rows": 0}

    def capture(layer: layer_lib.Layer, side: int, users: list[int]):
        def hook(_module, _inputs, output):
            view = layer.channels_view(output)
            for index in users:
                rows = pairs[index].sample.rows_in_batch(state["first"], state["rows"])
                captured[index][side] = _gather(view, rows)
        return hook

    users: list[dict[str, list[int]]] = [{}, {}]
    layers: list[dict[str, layer_lib.Layer]] = [{}, {}]
    for index, pair in enumerate(pairs):
        for side, layer in enumerate((pair.a, pair.b)):
            users[side].setdefault(layer.name, []).append(index)
            layers[side][layer.name] = layer
    common = torch.promote_types(*dtypes)
    for x, _labels in _device_batches(batches, device, dtypes[0], False):
        state["rows"] = x.shape[0]
        for side, model in enumerate(models):
            inputs = x if side == 0 or not x.is_floating_point() else x.to(dtypes[1])
            # Hooks are made per forward pass: a layer named by its call counts its module's calls from here.
            hooks = [layer.hook(capture(layer, side, users[side][name])) for name, layer in layers[side].items()]
            try:
                with forward_hooks(hooks):
                    model(inputs)
            except FuFastError:
                raise
            except Exception as e:
                raise FuFastError(f"the model failed on the data: {type(e).__name__}: {e}") from None
        for index, pair in enumerate(pairs):
            a_rows, b_rows = captured[index]
            joint = torch.cat([a_rows.to(common), b_rows.to(common)], dim=1)
            pair.moments.update(joint, torch.arange(joint.shape[0], device=joint.device))
            captured[index] = [None, None]
        state["first"] += x.shape[0]
        if progress is not None:
            progress(state["first"] - batches.offset, batches.stop - batches.offset)


def _model_record(model: nn.Module, label: str) -> dict:
    info = dict(getattr(model, "fu_fast_config", None) or {})
    return {"label": label, "name": info.pop("name", type(model).__name__), "width": info.pop("width", None),
            "options": info.pop("options", {}), "parameters": sum(p.numel() for p in model.parameters())}


# ------------------------------------------------------------------------------------- the numbers

def pair_mapping(covariance: np.ndarray, units_a: int, ridge: float = DEFAULT_RIDGE, *, a: str = "a",
                 b: str = "b", kind: str = "linear", samples: int = 0) -> PairMapping:
    """The numbers of one layer pair from the joint covariance of A's ``units_a`` units followed by B's."""
    covariance = np.asarray(covariance, dtype=np.float64)
    s_aa, s_ab = covariance[:units_a, :units_a], covariance[:units_a, units_a:]
    s_bb = covariance[units_a:, units_a:]
    # Each layer's eigendecomposition serves both directions: as regressors and as the target.
    spectrum_a, spectrum_b = _spectrum(s_aa), _spectrum(s_bb)
    return PairMapping(a=a, b=b, kind=kind, units_a=units_a, units_b=covariance.shape[0] - units_a, samples=samples,
                       cka=linear_cka(s_aa, s_ab, s_bb),
                       b_from_a=_explained(s_aa, s_ab, s_bb, ridge, spectrum_a, spectrum_b),
                       a_from_b=_explained(s_bb, s_ab.T, s_aa, ridge, spectrum_b, spectrum_a), covariance=covariance)


def linear_cka(s_aa: np.ndarray, s_ab: np.ndarray, s_bb: np.ndarray) -> float | None:
    """||S_AB||_F^2 / (||S_AA||_F ||S_BB||_F) of centred covariances; None when a layer has no variance.
    Each block is divided by its layer's largest variance first (CKA does not change; no overflow)."""
    scale_a, scale_b = _scale(s_aa), _scale(s_bb)
    if scale_a == 0.0 or scale_b == 0.0:
        return None
    cross = np.linalg.norm(s_ab / math.sqrt(scale_a) / math.sqrt(scale_b)) ** 2
    value = cross / (np.linalg.norm(s_aa / scale_a) * np.linalg.norm(s_bb / scale_b))
    return float(min(value, 1.0))


def explained(s_xx: np.ndarray, s_xy: np.ndarray, s_yy: np.ndarray, ridge: float = DEFAULT_RIDGE) -> Explained:
    """Layer Y explained by a ridge regression on all units of layer X (docs/definitions.md).

    With S_XX = U diag(e) U^T (e clipped at 0) and lambda = ridge * trace(S_XX) / C_X, the variance
    of a combination w^T y that the regression explains is ||diag(e + lambda)^-1/2 U^T S_XY w||^2:
    per unit (w a unit vector) and per principal direction of Y (w an eigenvector of S_YY).
    """
    return _explained(s_xx, s_xy, s_yy, ridge, _spectrum(s_xx), _spectrum(s_yy))


def _explained(s_xx: np.ndarray, s_xy: np.ndarray, s_yy: np.ndarray, ridge: float, spectrum_x: tuple,
               spectrum_y: tuple) -> Explained:
    """explained, with the _spectrum of S_XX and of S_YY."""
    units_x, units_y = s_xx.shape[0], s_yy.shape[0]
    variance = np.diag(s_yy).copy()
    live = variance > 0.0
    scale_x, e, u = spectrum_x
    trace = float(np.trace(s_xx)) / scale_x if scale_x > 0.0 else 0.0
    lam = ridge * trace / units_x if units_x else 0.0
    if scale_x > 0.0:
        # Scaling X by 1/sqrt(scale_x) changes no R^2; lambda is in the scaled units here.
        e = np.clip(e, 0.0, None)
        weights = 1.0 / np.sqrt(e + lam)
        projected = (u.T @ (s_xy / math.sqrt(scale_x))) * weights[:, None]   # (C_X, C_Y)
    else:       # no unit of X varies: it explains nothing
        projected = np.zeros((max(units_x, 1), units_y))
    explained_var = np.einsum("ij,ij->j", projected, projected)
    r2 = np.full(units_y, np.nan)
    r2[live] = np.clip(explained_var[live] / variance[live], 0.0, 1.0)
    values = r2[live]
    total = float(variance[live].sum())
    share = float(np.minimum(explained_var[live], variance[live]).sum() / total) if total > 0.0 else None
    quantiles = np.quantile(values, QUANTILES) if values.size else None

    components, direction_r2 = _directions(s_yy, spectrum_y, projected)
    return Explained(
        ridge_lambda=lam * scale_x, r2=[None if math.isnan(v) else float(v) for v in r2], live_units=int(live.sum()),
        mean=float(values.mean()) if values.size else None,
        quantiles=None if quantiles is None else {str(q): float(v) for q, v in zip(QUANTILES, quantiles)},
        variance_share=share, components=components,
        spanned=int(sum(v >= SPANNED_R2 for v in direction_r2)), direction_r2=direction_r2)


def _directions(s_yy: np.ndarray, spectrum_y: tuple, projected: np.ndarray) -> tuple[int, list[float]]:
    """k, the principal directions of Y for VARIANCE_SHARE of its variance (the rule of the PCA
    redundancy with pca_tolerance 1 - VARIANCE_SHARE), and the R^2 of each from ``projected``."""
    components = pca.redundancy(s_yy, 1.0 - VARIANCE_SHARE).components
    if components == 0:
        return 0, []
    scale, mu, v = spectrum_y
    order = np.argsort(mu)[::-1][:components]
    mu, v = np.clip(mu[order], 0.0, None), v[:, order]
    along = projected @ v                                          # (C_X, k), in Y's original units
    explained_var = np.einsum("ij,ij->j", along, along) / scale    # in the units of S_YY / scale
    r2 = np.where(mu > 0.0, explained_var / np.where(mu > 0.0, mu, 1.0), 0.0)
    return components, [float(x) for x in np.clip(r2, 0.0, 1.0)]


def _scale(covariance: np.ndarray) -> float:
    return float(np.abs(np.diag(covariance)).max()) if covariance.shape[0] else 0.0


def _spectrum(covariance: np.ndarray) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """(scale, eigenvalues, eigenvectors) of covariance / scale, scale its largest variance (dividing
    by it keeps LAPACK away from overflow); no eigenvalues or eigenvectors when scale is 0."""
    scale = _scale(covariance)
    if scale == 0.0:
        return scale, None, None
    return (scale, *_eigh(covariance / scale))


def _eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # torch's LAPACK, not NumPy's: one BLAS thread pool (fu_fast.analysis.pca says why).
    e, v = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(matrix)))
    return e.numpy(), v.numpy()


def unit_r2(explained_side: Explained) -> np.ndarray:
    """The per-unit R^2 as a float array, NaN for units with zero variance."""
    return np.array([np.nan if v is None else v for v in explained_side.r2], dtype=np.float64)



# ------------------------------------------------------------------------------- sweep directories

SWEEP_FILE, ANALYSIS_FILE, MODEL_FILE = "sweep.json", "analysis.json", "model.pt"


@dataclass(frozen=True)
class SweepMember:
    """A member of a sweep directory (docs/sweep-format.md), as its sweep.json records it."""
    id: str
    series: str
    model: str
    width: float
    trial: int
    weights: Path        # its run's model.pt, or epoch-N.pt for a member of a sweep with epochs_after
    run: Path            # its training run (run.json)
    done: bool           # its analysis.json exists: the sweep has finished it
    split: str | None = None     # the split and example limit the sweep analysed it on ([analyze])
    limit: int | None = None


def is_sweep(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / SWEEP_FILE).is_file()


def sweep_members(sweep_dir: str | Path) -> list[SweepMember]:
    """The members recorded in SWEEP_DIR/sweep.json, checked: a record that is not a sweep's, or a
    member folder outside the sweep directory, is one FuFastError line naming the file."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / SWEEP_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FuFastError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(record, dict) or record.get("schema") != "fu-fast/sweep/1" \
            or not isinstance(record.get("members"), list):
        raise FuFastError(f"{path} is not a fu-fast sweep record")
    members = []
    root = sweep_dir.resolve()
    for i, entry in enumerate(record["members"]):
        problem = _member_problem(entry)
        if problem:
            raise FuFastError(f"{path}: members[{i}] {problem}")
        folder, run = sweep_dir / entry["dir"], sweep_dir / entry.get("run", entry["dir"])
        for inside in (folder, run):
            if not inside.resolve().is_relative_to(root):
                raise FuFastError(f"{path}: member {entry['id']} lies outside the sweep directory ({inside})")
        epoch = entry.get("epoch")
        weights = run / (MODEL_FILE if epoch is None else f"epoch-{epoch}.pt")
        analysis = entry.get("analysis") if isinstance(entry.get("analysis"), dict) else {}
        split, limit = analysis.get("split"), analysis.get("limit")
        members.append(SweepMember(entry["id"], entry["series"], entry["model"], float(entry["width"]),
                                   entry["trial"], weights, run, (folder / ANALYSIS_FILE).is_file(),
                                   split if isinstance(split, str) else None,
                                   limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0
                                   else None))
    if not members:
        raise FuFastError(f"{path} records no members")
    return members


def _member_problem(entry) -> str | None:
    if not isinstance(entry, dict):
        return f"is a {type(entry).__name__}, not an object"
    for key, kinds in (("id", (str,)), ("dir", (str,)), ("series", (str,)), ("model", (str,)),
                       ("width", (numbers.Real,)), ("trial", (int,))):
        value = entry.get(key)
        if not isinstance(value, kinds) or isinstance(value, bool):
            return f"has {key}={value!r}"
    if not (entry["width"] > 0 and math.isfinite(entry["width"])) or entry["trial"] < 0:
        return f"has width {entry['width']!r} and trial {entry['trial']!r}"
    if not isinstance(entry.get("run", entry["dir"]), str):
        return f"has run={entry.get('run')!r}"
    epoch = entry.get("epoch")
    if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0):
        return f"has epoch={epoch!r}"
    return None


def sweep_pairs(members: list[SweepMember]) -> list[tuple[str, SweepMember, SweepMember]]:
    """(relation, A, B) for every pair a sweep maps: per series, each pair of neighbouring widths at
    each trial both have ("width": A the thinner), and at each width every pair of trials ("seed": A
    the lower trial). Members not done are in the list too; the caller skips them."""
    pairs = []
    for series in dict.fromkeys(m.series for m in members):
        at = {(m.width, m.trial): m for m in members if m.series == series}
        widths = sorted({w for w, _ in at})
        for thin, wide in zip(widths, widths[1:]):
            for trial in sorted({t for w, t in at if w == thin} & {t for w, t in at if w == wide}):
                pairs.append(("width", at[thin, trial], at[wide, trial]))
        for width in widths:
            trials = sorted(t for w, t in at if w == width)
            pairs += [("seed", at[width, s], at[width, t]) for i, s in enumerate(trials) for t in trials[i + 1:]]
    return pairs


# ------------------------------------------------------------------------------------------ figures

def mapping_figure(pairs: list[dict], title: str):
    """The R^2 distribution of B's units on A per layer pair (rows) and model pair (boxes: 5%, 25%,
    50%, 75% and 95% quantiles; the triangle is the mean, the cross the variance-weighted share);
    width pairs in one column (the wide layer explained by the thin one), seed pairs in another.
    None when no pair has a layer with varying units."""
    from matplotlib.figure import Figure

    columns = [r for r in ("width", "seed", None) if any(p.get("relation") == r for p in pairs)]
    rows = list(dict.fromkeys(_pair_name(layer) for p in pairs for layer in p["layers"]))
    if not rows or not columns:
        return None
    boxes = [sum(p.get("relation") == r for p in pairs) for r in columns]
    fig = Figure(figsize=(sum(max(4.0, 1.5 + 0.7 * n) for n in boxes), 3.2 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    fig.suptitle(title)
    drawn = False
    for col, relation in enumerate(columns):
        chosen = [p for p in pairs if p.get("relation") == relation]
        for row, name in enumerate(rows):
            ax = axes[row][col]
            stats, shares = [], []
            for p in chosen:
                layer = next((m for m in p["layers"] if _pair_name(m) == name), None)
                side = None if layer is None else layer["b_from_a"]
                if side is None or side["r2_quantiles"] is None:
                    continue
                q = side["r2_quantiles"]
                stats.append({"whislo": q["0.05"], "q1": q["0.25"], "med": q["0.5"], "q3": q["0.75"],
                              "whishi": q["0.95"], "mean": side["mean_r2"], "fliers": [], "label": _pair_label(p)})
                shares.append(side["variance_share"])
            if stats:
                ax.bxp(stats, showmeans=True, showfliers=False)
                ax.plot(range(1, len(shares) + 1), shares, "x", color="tab:red", label="variance share")
                ax.tick_params(axis="x", labelsize=7)
                drawn = True
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel(f"{name}\nR² of B's units on A")
            ax.set_title({"width": "wide units explained by the thin layer", "seed": "seed B explained by seed A",
                          None: "B explained by A"}[relation], fontsize=9)
    return fig if drawn else None


def _pair_name(layer: dict) -> str:
    return layer["a"] if layer["a"] == layer["b"] else f"{layer['a']} → {layer['b']}"


def _pair_label(pair: dict) -> str:
    a, b = pair["models"]["a"], pair["models"]["b"]

    def width(m):
        return "?" if m.get("width") is None else f"{m['width']:g}"

    def trial(m):
        return "" if m.get("trial") is None else f"t{m['trial']}"

    if pair.get("relation") == "seed":
        return f"w{width(a)}\n{trial(a)}~{trial(b)}"
    return f"{width(a)}→{width(b)}\n{trial(a)}".rstrip()
