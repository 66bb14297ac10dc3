"""AnalysisResult: the per-layer records and the JSON document of docs/result-format.md."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_atomic
from ..errors import FuFastError

SCHEMA = "fu-fast/analysis/2"
# Documents of the first schema lack the keys version 2 added (docs/result-format.md); they read
# back with those as null (or, for expanded_at, the layer itself, which every layer then was).
READABLE_SCHEMAS = (SCHEMA, "fu-fast/analysis/1")


@dataclass
class LayerResult:
    name: str
    kind: str
    units: int
    ablation_units: int
    curves: list[list[float]]
    prunable_fraction: float
    samples: int
    components: int
    redundant_units: int
    explained_variance_ratio: list[float]
    mean_abs_r: float | None
    abs_r_quantiles: dict[str, float] | None
    reference_units: int | None = None
    reference_ablation_units: int | None = None
    # Counts of |r| over all pairs in HISTOGRAM_BINS bins on [0, 1]. Not part of the result
    # document (docs/result-format.md); a sweep keeps it beside it, for the violin plots.
    abs_r_histogram: list[int] | None = None
    unit: str = "position"            # the ablation unit used for this layer ("auto" resolved)
    # Where the masked copies began: the layer itself (a cut point), an earlier module output,
    # or None for the model input.
    expanded_at: str | None = None
    components_80: int | None = None     # the fewest components explaining 80% of the variance
    similar_units: int | None = None     # units with |r| >= 0.5 to some other unit
    # Class selectivity of the units: {"labels": "true" | "predicted", "units", "mean", "quantiles"}
    selectivity: dict | None = None
    # Targeted ablation: {order: {"curve": [...], "prunable_fraction": p}} (fu_fast.analysis.orders)
    orders: dict | None = None
    # Robustness to activation noise: {"levels", "curves" (per repeat), "tolerance_level"}
    noise: dict | None = None

    @property
    def prunable_units(self) -> float:
        return self.prunable_fraction * self.ablation_units

    @property
    def prunability_normalized(self) -> float | None:
        if not self.reference_ablation_units:
            return None
        return self.prunable_units / self.reference_ablation_units

    @property
    def redundancy_normalized(self) -> float | None:
        if not self.reference_units:
            return None
        return self.redundant_units / self.reference_units

    def to_dict(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "unit": self.unit, "expanded_at": self.expanded_at,
            "units": self.units, "ablation_units": self.ablation_units,
            "reference_units": self.reference_units,
            "reference_ablation_units": self.reference_ablation_units,
            "prunability": {"curves": self.curves, "prunable_fraction": self.prunable_fraction,
                            "prunable_units": self.prunable_units,
                            "normalized": self.prunability_normalized},
            "redundancy": {"samples": self.samples, "components": self.components,
                           "redundant_units": self.redundant_units,
                           "explained_variance_ratio": self.explained_variance_ratio,
                           "normalized": self.redundancy_normalized, "components_80": self.components_80},
            "correlation": {"mean_abs_r": self.mean_abs_r, "abs_r_quantiles": self.abs_r_quantiles,
                            "similar_units": self.similar_units},
            "selectivity": self.selectivity,
            "orders": self.orders, "noise": self.noise,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LayerResult":
        p, r, c = d["prunability"], d["redundancy"], d["correlation"]
        return cls(d["name"], d["kind"], d["units"], d["ablation_units"], p["curves"], p["prunable_fraction"],
                   r["samples"], r["components"], r["redundant_units"], r["explained_variance_ratio"],
                   c["mean_abs_r"], c["abs_r_quantiles"], d.get("reference_units"),
                   d.get("reference_ablation_units"), unit=d.get("unit", "position"),
                   # documents from before non-cut-point layers: every layer was its own
                   expanded_at=d.get("expanded_at", d["name"]), components_80=r.get("components_80"),
                   similar_units=c.get("similar_units"), selectivity=d.get("selectivity"), orders=d.get("orders"),
                   noise=d.get("noise"))


def _mean_or_none(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


@dataclass
class AnalysisResult:
    model: dict
    data: dict
    settings: dict
    layers: dict[str, LayerResult]
    timing: dict
    build: dict
    trial: int | None = None
    # Candidates of the default layer discovery that could not be analysed: [{"layer", "reason"}].
    skipped_layers: list[dict] = field(default_factory=list)

    @property
    def summary(self) -> dict:
        """Network-level values: the mean of the normalised per-layer values."""
        layers = list(self.layers.values())
        return {"prunability": _mean_or_none([layer.prunability_normalized for layer in layers]),
                "redundancy": _mean_or_none([layer.redundancy_normalized for layer in layers])}

    def normalize(self, reference: "AnalysisResult") -> "AnalysisResult":
        """Set every layer's reference units from the same layer of the 4x model (in place)."""
        for name, layer in self.layers.items():
            ref = reference.layers.get(name)
            if ref is None:
                raise ValueError(f"the reference model has no layer '{name}'")
            layer.reference_units, layer.reference_ablation_units = ref.units, ref.ablation_units
        return self

    def to_dict(self) -> dict:
        document = {
            "schema": SCHEMA, "model": self.model, "data": self.data, "trial": self.trial,
            "settings": self.settings, "layers": [layer.to_dict() for layer in self.layers.values()],
            "summary": self.summary, "timing": self.timing, "build": self.build,
        }
        if self.skipped_layers:
            document["skipped_layers"] = self.skipped_layers
        _check_finite(document)
        return document

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON document atomically: a reader sees the old file or the whole new one."""
        return write_atomic(path, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, d: dict) -> "AnalysisResult":
        """The result a document describes; ValueError, saying what is wrong, for anything else."""
        if not isinstance(d, dict) or d.get("schema") not in READABLE_SCHEMAS:
            found = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not a fu-fast analysis document (schema {found!r})")
        try:
            layers = {layer["name"]: LayerResult.from_dict(layer) for layer in d["layers"]}
            return cls(d["model"], d["data"], d["settings"], layers, d["timing"], d["build"], d.get("trial"),
                       list(d.get("skipped_layers", [])))
        except KeyError as e:
            raise ValueError(f"a {SCHEMA} document without the entry {e}") from None
        except (TypeError, AttributeError, IndexError) as e:   # an entry of the wrong type
            raise ValueError(f"a malformed {SCHEMA} document ({e})") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AnalysisResult":
        """The result saved at ``path``; FuFastError naming the file when it cannot be one."""
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except OSError as e:
            raise FuFastError(f"cannot read {path}: {e.strerror or e}") from None
        except (ValueError, UnicodeDecodeError) as e:   # JSONDecodeError is a ValueError
            raise FuFastError(f"{path} is not a fu-fast analysis document: {str(e).splitlines()[0]}") from None


def _check_finite(value, where="result") -> None:
    """No NaN or infinity ever reaches a result document (docs/definitions.md)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"non-finite value at {where}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")
