"""The report beyond frivolous units: the sections of the optional analyses a sweep may carry.

Each section is drawn only from what the documents hold (absent keys: no section, no figure):

* ``orders``: targeted versus random ablation, per series, order and width: the prunable fraction and
  the prunable units it gives (normalised like the report's prunability), mean over layers; "random" is
  the document's own prunable fraction (max over the random repeats), the reference line;
* ``noise``: the tolerance level (the noise std, a multiple of each unit's std, where label agreement
  falls to 1 - t; mean over layers) per width, and the mean noise curves per width;
* ``selectivity``: class selectivity per layer and width (mean, and the quantiles averaged over trials);
* ``similarity``: similar units and components for 80% of the variance per width (normalised by the
  reference-width layer's units like redundancy; mean over the layers that have them);
* ``mapping``: from SWEEP_DIR/mapping/mapping.json (``fu-fast map SWEEP_DIR --out SWEEP_DIR/mapping``), per
  series, neighbouring width pair and layer: the share of the wide layer's principal directions (95% of
  its variance) the thin layer spans, the directions it does not span, the mean R² of the wide layer's
  units from the thin layer, and linear CKA.

Every value is a mean ± sd over trials at each width (tables.stats), with g (tables.safe_gain, of the
trial means) where a quantity is expected to scale with width. The optional entries of each analysis
document and the mapping document are checked before use: a damaged one is one FuFastError line naming
the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..analysis.mapping import SCHEMA as MAPPING_SCHEMA
from ..analysis.pca import QUANTILES
from ..errors import FuFastError
from .figures import ERROR_BARS, _curve, _panels, _ramp, _width_axis, remove_figure, save_figure
from .tables import (SD_NOTE, MemberResult, Sweep, _gains, _labels, _read_json, _row, _table_head, fmt_gain,
                     fmt_stats, group_by_width, is_finite, is_normalized, is_whole, refuse_document, safe_gain, stats)

MAPPING_FILE = Path("mapping") / "mapping.json"     # inside the sweep directory
QUANTILE_KEYS = tuple(str(q) for q in QUANTILES)    # "0.05", "0.25", "0.5", "0.75", "0.95"
SECTIONS = ("orders", "noise", "selectivity", "similarity", "mapping")
FIGURE_NAMES = {"orders": "targeted_ablation", "noise": "noise_robustness", "selectivity": "selectivity",
                "mapping": "mappability"}


# ------------------------------------------------------------------------------------------ checks

def _share(value) -> bool:
    return is_finite(value) and 0 <= value <= 1


def _curve_of(value, length: int) -> bool:
    return isinstance(value, list) and len(value) == length and all(_share(v) for v in value)


def check_member(path: Path, member: MemberResult) -> None:
    """The optional per-layer entries (orders, noise, selectivity, components_80, similar_units) of one
    member's analysis.json have the types the report computes with; FuFastError naming ``path`` otherwise."""
    def refuse(where, value, noun):
        refuse_document(path, "analysis", where, value, noun)

    levels = len(member.analysis.settings["levels"])   # checked by tables.load_sweep
    for name, layer in member.analysis.layers.items():
        where = f"layer {str(name)[:40]!r}"
        if layer.orders is not None:
            if not isinstance(layer.orders, dict):
                refuse(f"{where} orders", layer.orders, "an object of orders")
            for order, entry in layer.orders.items():
                at = f"{where} orders.{str(order)[:40]}"
                if not isinstance(entry, dict):
                    refuse(at, entry, "an object with curve and prunable_fraction")
                if not _curve_of(entry.get("curve"), levels):
                    refuse(f"{at}.curve", entry.get("curve"), f"a list of {levels} numbers in [0, 1] (the levels)")
                if not _share(entry.get("prunable_fraction")):
                    refuse(f"{at}.prunable_fraction", entry.get("prunable_fraction"), "a number in [0, 1]")
        if layer.noise is not None:
            noise = layer.noise
            if not isinstance(noise, dict):
                refuse(f"{where} noise", noise, "an object with levels, curves and tolerance_level")
            steps = noise.get("levels")
            if not (isinstance(steps, list) and len(steps) >= 2 and all(is_finite(v) for v in steps)
                    and all(b > a for a, b in zip(steps, steps[1:]))):
                refuse(f"{where} noise.levels", steps, "an increasing list of at least two numbers")
            curves = noise.get("curves")
            if not (isinstance(curves, list) and curves and all(_curve_of(c, len(steps)) for c in curves)):
                refuse(f"{where} noise.curves", curves, f"a list of curves of {len(steps)} numbers in [0, 1]")
            if not (is_finite(noise.get("tolerance_level")) and noise["tolerance_level"] >= 0):
                refuse(f"{where} noise.tolerance_level", noise.get("tolerance_level"), "a number >= 0")
        if layer.selectivity is not None:
            chosen = layer.selectivity
            if not isinstance(chosen, dict):
                refuse(f"{where} selectivity", chosen, "an object or null")
            if not is_whole(chosen.get("units")):
                refuse(f"{where} selectivity.units", chosen.get("units"), "a whole number >= 0")
            if chosen.get("mean") is not None and not _share(chosen["mean"]):
                refuse(f"{where} selectivity.mean", chosen["mean"], "a number in [0, 1] or null")
            quantiles = chosen.get("quantiles")
            if quantiles is not None and not (isinstance(quantiles, dict)
                                              and all(_share(quantiles.get(k)) for k in QUANTILE_KEYS)):
                refuse(f"{where} selectivity.quantiles", quantiles,
                       f"an object of numbers in [0, 1] with the keys {', '.join(QUANTILE_KEYS)}, or null")
        for key in ("components_80", "similar_units"):
            value = getattr(layer, key)
            if value is not None and not is_whole(value):
                refuse(f"{where} {key}", value, "a whole number >= 0 or null")


def read_mapping(sweep_dir: Path) -> tuple[Path, list[dict]] | None:
    """The width pairs of SWEEP_DIR/mapping/mapping.json, checked as far as the report reads them;
    None when there is no such file."""
    path = sweep_dir / MAPPING_FILE
    if not path.exists():
        return None
    document = _read_json(path, None)

    def refuse(where, value, noun):
        refuse_document(path, "mapping", where, value, noun)

    if not isinstance(document, dict) or document.get("schema") != MAPPING_SCHEMA:
        schema = document.get("schema") if isinstance(document, dict) else None
        raise FuFastError(f"{path} is not a fu-fast mapping document (schema {str(schema)[:40]!r}, "
                          f"expected {MAPPING_SCHEMA!r})")
    pairs = document.get("pairs")
    if not isinstance(pairs, list):
        refuse("pairs", pairs, "a list")
    width_pairs = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict):
            refuse(f"pairs[{i}]", pair, "an object")
        if pair.get("relation") != "width":
            continue
        if not isinstance(pair.get("series"), str):
            refuse(f"pairs[{i}].series", pair.get("series"), "a string")
        models = pair.get("models")
        for side in ("a", "b"):
            model = models.get(side) if isinstance(models, dict) else None
            width = model.get("width") if isinstance(model, dict) else None
            if not (is_finite(width) and width > 0):
                refuse(f"pairs[{i}].models.{side}.width", width, "a positive number")
        layers = pair.get("layers")
        if not isinstance(layers, list):
            refuse(f"pairs[{i}].layers", layers, "a list")
        for j, layer in enumerate(layers):
            at = f"pairs[{i}].layers[{j}]"
            if not (isinstance(layer, dict) and isinstance(layer.get("a"), str) and isinstance(layer.get("b"), str)):
                refuse(at, layer, "an object with the layer names a and b")
            if layer.get("cka") is not None and not _share(layer["cka"]):
                refuse(f"{at}.cka", layer["cka"], "a number in [0, 1] or null")
            side = layer.get("b_from_a")
            if not isinstance(side, dict):
                refuse(f"{at}.b_from_a", side, "an object")
            if side.get("mean_r2") is not None and not _share(side["mean_r2"]):
                refuse(f"{at}.b_from_a.mean_r2", side["mean_r2"], "a number in [0, 1] or null")
            directions = side.get("directions")
            if not (isinstance(directions, dict) and is_whole(directions.get("components"))
                    and is_whole(directions.get("spanned")) and directions["spanned"] <= directions["components"]):
                refuse(f"{at}.b_from_a.directions", directions,
                       "an object of whole numbers components and spanned <= components")
        width_pairs.append(pair)
    return path, width_pairs


# ----------------------------------------------------------------------------------------- numbers

def summarize_beyond(sweep: Sweep) -> dict:
    """report.json's "beyond": each section the documents support (SECTIONS), per series."""
    folders = {entry.id: entry.folder for entry in sweep.entries}
    for member in sweep.members:
        check_member(folders[member.id] / "analysis.json", member)
    groups, labels = sweep.series(), _labels(sweep)
    out = {}
    for section, summarize in (("orders", _orders), ("noise", _noise), ("selectivity", _selectivity),
                               ("similarity", _similarity)):
        entries = []
        for series, members in groups.items():
            numbers = summarize(members)
            if numbers is not None:
                entries.append({"series": series, "label": labels[series], **numbers})
        if entries:
            out[section] = entries
    mapped = read_mapping(sweep.path)
    if mapped is not None:
        mapping = _mapping(mapped[1], labels)
        if mapping:
            out["mapping"] = {"file": MAPPING_FILE.as_posix(), "series": mapping}
    return out


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _orders(members: list[MemberResult]) -> dict | None:
    ordered = [m for m in members if any(layer.orders for layer in m.analysis.layers.values())]
    if not ordered:
        return None
    normalized = is_normalized(members)   # as the series' main table
    names = ["random"] + list(dict.fromkeys(o for m in ordered for layer in m.analysis.layers.values()
                                            for o in (layer.orders or {}) if o != "random"))

    def value(member: MemberResult, order: str) -> tuple[float, float] | None:
        """(prunable fraction, prunable units / n_ref) of ``order``, each the mean over the layers that have it."""
        layers = [layer for layer in member.analysis.layers.values()
                  if order == "random" or order in (layer.orders or {})]
        if not layers:
            return None
        fractions = [layer.prunable_fraction if order == "random" else layer.orders[order]["prunable_fraction"]
                     for layer in layers]
        units = [f * layer.ablation_units / (layer.reference_ablation_units if normalized else 1)
                 for f, layer in zip(fractions, layers)]
        return sum(fractions) / len(layers), sum(units) / len(layers)

    orders = {}
    for order in names:
        rows = []
        for width, trials in group_by_width(ordered).items():
            values = [v for v in (value(m, order) for m in trials) if v is not None]
            if values:
                rows.append({"width": width, "trials": len(values), "fraction": stats([v[0] for v in values]),
                             "prunability": stats([v[1] for v in values])})
        orders[order] = {"rows": rows, "gains": _gains(rows, ("fraction", "prunability"))}
    return {"normalized": normalized, "orders": orders}


def _noise(members: list[MemberResult]) -> dict | None:
    noisy = [m for m in members if any(layer.noise for layer in m.analysis.layers.values())]
    if not noisy:
        return None
    grid = next(layer.noise["levels"] for layer in noisy[0].analysis.layers.values() if layer.noise)
    rows, curves = [], []
    for width, trials in group_by_width(noisy).items():
        tolerances, agreement = [], []
        for m in trials:
            layers = [layer.noise for layer in m.analysis.layers.values() if layer.noise]
            tolerances.append(sum(n["tolerance_level"] for n in layers) / len(layers))
            # per layer the mean over repeats, on the first member's levels (should the settings differ)
            agreement.append(np.mean([np.interp(grid, n["levels"], np.mean(n["curves"], axis=0)) for n in layers],
                                     axis=0))
        rows.append({"width": width, "trials": len(trials), "tolerance_level": stats(tolerances)})
        curves.append({"width": width, "agreement": [float(v) for v in np.mean(agreement, axis=0)]})
    tolerance = noisy[0].analysis.settings.get("tolerance")
    return {"tolerance": 0.2 if tolerance is None else tolerance, "rows": rows,
            "gains": _gains(rows, ("tolerance_level",)), "curves": {"levels": list(grid), "rows": curves}}


def _selectivity(members: list[MemberResult]) -> dict | None:
    names = list(dict.fromkeys(name for m in members for name, layer in m.analysis.layers.items()
                               if layer.selectivity is not None and layer.selectivity.get("mean") is not None))
    if not names:
        return None
    layers = {}
    for name in names:
        rows = []
        for width, trials in group_by_width(members).items():
            chosen = [m.analysis.layers[name].selectivity for m in trials if name in m.analysis.layers]
            chosen = [c for c in chosen if c is not None and c.get("mean") is not None]
            if not chosen:
                continue
            quantiles = [c["quantiles"] for c in chosen if c.get("quantiles") is not None]
            rows.append({"width": width, "trials": len(chosen), "units": stats([c["units"] for c in chosen]),
                         "mean": stats([c["mean"] for c in chosen]),
                         "quantiles": {k: _mean(q[k] for q in quantiles) for k in QUANTILE_KEYS} if quantiles
                         else None})
        layers[name] = {"rows": rows, "gains": _gains(rows, ("mean",))}
    return {"layers": layers}


def _similarity(members: list[MemberResult]) -> dict | None:
    keys = ("similar_units", "components_80")
    if not any(getattr(layer, key) is not None for m in members for layer in m.analysis.layers.values()
               for key in keys):
        return None
    normalized = is_normalized(members)

    def value(member: MemberResult, key: str) -> float | None:
        return _mean(getattr(layer, key) / (layer.reference_units if normalized else 1)
                     for layer in member.analysis.layers.values() if getattr(layer, key) is not None)

    rows = []
    for width, trials in group_by_width(members).items():
        values = {key: [value(m, key) for m in trials] for key in keys}
        rows.append({"width": width, "trials": max(sum(v is not None for v in vs) for vs in values.values()),
                     **{key: stats(vs) for key, vs in values.items()}})
    rows = [r for r in rows if r["trials"]]
    return {"normalized": normalized, "rows": rows, "gains": _gains(rows, keys)}


def _mapping(pairs: list[dict], labels: dict[str, str]) -> list[dict]:
    """Per series and layer, a row per neighbouring width pair: statistics over the trials mapped."""
    out = []
    for series in dict.fromkeys(p["series"] for p in pairs):
        grouped: dict[str, dict[tuple[float, float], list[dict]]] = {}
        for p in pairs:
            if p["series"] != series:
                continue
            widths = (float(p["models"]["a"]["width"]), float(p["models"]["b"]["width"]))
            for layer in p["layers"]:
                name = layer["a"] if layer["a"] == layer["b"] else f"{layer['a']} → {layer['b']}"
                grouped.setdefault(name, {}).setdefault(widths, []).append(layer)
        layers = {}
        for name, by_pair in grouped.items():
            rows = []
            for (thin, wide), found in sorted(by_pair.items()):
                directions = [layer["b_from_a"]["directions"] for layer in found]
                rows.append({"thin": thin, "wide": wide, "width": wide, "trials": len(found),
                             "components": stats([d["components"] for d in directions]),
                             "spanned_share": stats([d["spanned"] / d["components"] if d["components"] else None
                                                     for d in directions]),
                             "unspanned": stats([d["components"] - d["spanned"] for d in directions]),
                             "mean_r2": stats([layer["b_from_a"].get("mean_r2") for layer in found]),
                             "cka": stats([layer.get("cka") for layer in found])})
            layers[name] = {"rows": rows, "gains": {"unspanned": safe_gain(
                [r["wide"] for r in rows], [r["unspanned"]["mean"] if r["unspanned"] else None for r in rows])}}
        out.append({"series": series, "label": labels.get(series, series), "layers": layers})
    return out


# ---------------------------------------------------------------------------------------- markdown

def beyond_markdown(beyond: dict, figures: dict[str, str], reference: str = "4x") -> list[str]:
    """summary.md's lines for each section of ``beyond``, with its figure (``figures``: section -> name);
    ``reference`` names the series' reference width (tables.reference_text)."""
    lines = []
    scale = (f"normalised by the units of the same layer in the series' {reference} member "
             "(series without it: unit counts, marked [units])")
    for section in SECTIONS:
        if section not in beyond:
            continue
        lines += {"orders": lambda: _orders_markdown(beyond["orders"], scale),
                  "noise": lambda: _noise_markdown(beyond["noise"]),
                  "selectivity": lambda: _selectivity_markdown(beyond["selectivity"]),
                  "similarity": lambda: _similarity_markdown(beyond["similarity"], scale),
                  "mapping": lambda: _mapping_markdown(beyond["mapping"])}[section]()
        if section in figures:
            name = figures[section]
            lines += [f"![{name}]({name}.png) ([pdf]({name}.pdf))", ""]
    return lines


def _units_tag(s: dict) -> str:
    return "" if s["normalized"] else " [units]"


def _orders_markdown(series: list[dict], scale: str) -> list[str]:
    lines = ["## Targeted versus random ablation", "",
             "Does the wide network's frivolity depend on which units go first? Prunable fraction p* when the "
             "units are ablated in a given order (docs/definitions.md, \"Targeted ablation\"; `random`: the "
             "keyed random orders, max over repeats, the reference), and the prunable units it gives, "
             f"{scale}; mean over layers, mean ± sd over the trials analysed with orders; {SD_NOTE}. "
             "g: of the trial means against width.", ""]
    for s in series:
        lines += [f"### {s['label']}{_units_tag(s)}", "",
                  *_table_head(["order", "width", "trials", "prunable fraction",
                                "prunability" if s["normalized"] else "prunable units"])]
        for order, entry in s["orders"].items():
            lines += [_row([order, f"{r['width']:g}", str(r["trials"]), fmt_stats(r["fraction"]),
                            fmt_stats(r["prunability"])]) for r in entry["rows"]]
            lines.append(_row([order, "g", "", fmt_gain(entry["gains"]["fraction"]),
                               fmt_gain(entry["gains"]["prunability"])]))
        lines.append("")
    return lines


def _noise_markdown(series: list[dict]) -> list[str]:
    lines = ["## Noise robustness", "",
             "Tolerance level: the standard deviation of Gaussian noise added to a layer (a multiple of each "
             "unit's standard deviation on the data) at which label agreement falls to 1 - t (the largest over "
             f"the repeats; fu_fast/analysis/noise.py); mean over layers, mean ± sd over trials; {SD_NOTE}. "
             "g: of the trial means against width.", ""]
    for s in series:
        lines += [f"### {s['label']}", "", f"t = {s['tolerance']:g}.", "",
                  *_table_head(["width", "trials", "tolerance level"])]
        lines += [_row([f"{r['width']:g}", str(r["trials"]), fmt_stats(r["tolerance_level"])]) for r in s["rows"]]
        lines += [_row(["g", "", fmt_gain(s["gains"]["tolerance_level"])]), ""]
    return lines


def _selectivity_markdown(series: list[dict]) -> list[str]:
    lines = ["## Class selectivity", "",
             "Per layer and width: the mean class selectivity of the units it is defined for (docs/definitions.md, "
             f"\"Class selectivity and similar units\"), mean ± sd over trials ({SD_NOTE}), and its quantiles, "
             "each the mean over trials; g: of the trial means of the mean selectivity.", ""]
    quantiles = [f"q{k}" for k in QUANTILE_KEYS]
    for s in series:
        lines += [f"### {s['label']}", "", *_table_head(["layer", "width", "trials", "mean selectivity"] + quantiles)]
        for name, layer in s["layers"].items():
            for r in layer["rows"]:
                q = r["quantiles"]
                lines.append(_row([name, f"{r['width']:g}", str(r["trials"]), fmt_stats(r["mean"])]
                                  + [("n/a" if q is None or q[k] is None else f"{q[k]:.4f}") for k in QUANTILE_KEYS]))
            lines.append(_row([name, "g", "", fmt_gain(layer["gains"]["mean"])] + [""] * len(quantiles)))
        lines.append("")
    return lines


def _similarity_markdown(series: list[dict], scale: str) -> list[str]:
    lines = ["## Similar units and components for 80%", "",
             "Similar units: units with |r| >= 0.5 to another unit of the layer; components (80%): the fewest "
             "principal components explaining 80% of the layer's variance (docs/definitions.md, \"Class "
             f"selectivity and similar units\"). Each {scale}; mean over the layers that have it, mean ± sd over "
             f"trials; {SD_NOTE}. g: of the trial means against width.", ""]
    for s in series:
        lines += [f"### {s['label']}{_units_tag(s)}", "",
                  *_table_head(["width", "trials", "similar units", "components (80%)"])]
        lines += [_row([f"{r['width']:g}", str(r["trials"]), fmt_stats(r["similar_units"]),
                        fmt_stats(r["components_80"])]) for r in s["rows"]]
        lines += [_row(["g", "", fmt_gain(s["gains"]["similar_units"]), fmt_gain(s["gains"]["components_80"])]), ""]
    return lines


def _mapping_markdown(mapping: dict) -> list[str]:
    lines = ["## Mappability between neighbouring widths", "",
             f"From `{mapping['file']}` (`fu-fast map SWEEP_DIR --out SWEEP_DIR/mapping`; docs/definitions.md, "
             "\"Mappability\"), per series, layer and pair of neighbouring widths (thin → wide), over the trials "
             "mapped: the share of the wide layer's principal directions (95% of its variance) that the thin layer "
             "spans (R² >= 0.95), the number it does not span, the mean R² of the wide layer's units from the thin "
             f"layer, and linear CKA; mean ± sd over trials ({SD_NOTE}). g: of the directions not spanned, "
             "against the wide width.", ""]
    for s in mapping["series"]:
        lines += [f"### {s['label']}", "", *_table_head(["layer", "widths", "trials", "directions spanned",
                                                         "directions not spanned", "mean R²", "CKA"])]
        for name, layer in s["layers"].items():
            lines += [_row([name, f"{r['thin']:g} → {r['wide']:g}", str(r["trials"]), fmt_stats(r["spanned_share"]),
                            fmt_stats(r["unspanned"]), fmt_stats(r["mean_r2"]), fmt_stats(r["cka"])])
                      for r in layer["rows"]]
            lines.append(_row([name, "g", "", "", fmt_gain(layer["gains"]["unspanned"]), "", ""]))
        lines.append("")
    return lines


# ----------------------------------------------------------------------------------------- figures

def write_beyond_figures(beyond: dict, out_dir: Path, reference: str = "4x") -> dict[str, str]:
    """Each section's figure into ``out_dir`` (PNG and PDF); section -> figure name. The figure of a
    section the data no longer has (an earlier report's) is removed. ``reference`` names the series'
    reference width (tables.reference_text)."""
    written = {}
    for section, name in FIGURE_NAMES.items():
        fig = FIGURES[section](beyond[section], reference) if section in beyond else None
        if fig is None:
            remove_figure(out_dir, name)
            continue
        save_figure(fig, out_dir, name)
        written[section] = name
    return written


def _positive_curve(ax, rows: list[dict], key: str, label: str, **style) -> bool:
    """Trial means > 0 with sd error bars against width, for a log axis; False when none is positive."""
    points = [(r["width"], r[key]["mean"], r[key]["sd"]) for r in rows if r.get(key) and r[key]["mean"] > 0]
    if points:
        w, mean, sd = (np.array(v) for v in zip(*points))
        ax.errorbar(w, mean, yerr=[np.minimum(sd, 0.999 * mean), sd], marker="o", markersize=4, capsize=3, label=label,
                    **style)
    return bool(points)


def _orders_figure(series: list[dict], reference: str) -> Figure | None:
    keys = {"fraction": "prunable fraction p*", "prunability": f"prunable units (÷ units of the {reference} layer)"}
    fig, axes = _panels(2 * len(series), "Targeted versus random ablation\n(mean over layers; dashed: random)",
                        columns=len(series))
    drawn = False
    for i, s in enumerate(series):
        for row, (key, ylabel) in enumerate(keys.items()):
            ax = axes[row * len(series) + i]
            targeted = [o for o in s["orders"] if o != "random"]
            for order, entry in s["orders"].items():
                style = {"color": "k", "linestyle": "--"} if order == "random" else \
                    {"color": f"C{targeted.index(order) % 10}"}
                drawn |= _positive_curve(ax, entry["rows"], key, f"{order}, g = {fmt_gain(entry['gains'][key])}",
                                         **style)
            ax.set_yscale("log")
            _width_axis(ax, [r["width"] for entry in s["orders"].values() for r in entry["rows"]])
            ax.set_ylabel(ylabel if key == "fraction" or s["normalized"] else "prunable units (not normalised)")
            ax.set_title(s["label"], fontsize=10)
            ax.legend(fontsize=6, title=ERROR_BARS, title_fontsize=6)
    return fig if drawn else None


def _noise_figure(series: list[dict], reference: str) -> Figure | None:
    fig, axes = _panels(2 * len(series), "Noise robustness (mean over trials, repeats and layers)",
                        columns=len(series))
    for i, s in enumerate(series):
        ax = axes[i]
        levels = s["curves"]["levels"]
        for row, color in zip(s["curves"]["rows"], _ramp(len(s["curves"]["rows"]))):
            ax.plot(levels, row["agreement"], marker=".", color=color, label=f"width {row['width']:g}")
        ax.axhline(1 - s["tolerance"], color="k", linestyle=":", linewidth=1, label=f"1 - t = {1 - s['tolerance']:g}")
        ax.set(xlabel="noise std (× each unit's std)", ylabel="label agreement with the intact network",
               ylim=(0, 1.02), title=s["label"])
        ax.title.set_fontsize(10)
        ax.legend(fontsize=6)
        ax = axes[len(series) + i]
        if _positive_curve(ax, s["rows"], "tolerance_level", f"g = {fmt_gain(s['gains']['tolerance_level'])}",
                           color=f"C{i % 10}"):
            ax.set_yscale("log")
            ax.legend(fontsize=7, title=ERROR_BARS, title_fontsize=7)
        _width_axis(ax, [r["width"] for r in s["rows"]])
        ax.set_ylabel("tolerance level (noise std where agreement = 1 - t)")
        ax.set_title(f"{s['label']}: tolerance level vs width", fontsize=10)
    return fig


def _selectivity_figure(series: list[dict], reference: str) -> Figure | None:
    panels = [(s, name, layer) for s in series for name, layer in s["layers"].items()]
    fig, axes = _panels(len(panels), "Class selectivity per layer and width (means over trials)\nboxes: quartiles "
                        "and median; whiskers: 5% and 95% quantiles; triangle: mean",
                        columns=min(4, max(len(s["layers"]) for s in series)))
    for ax, (s, name, layer) in zip(axes, panels):
        boxes = [{"whislo": q["0.05"], "q1": q["0.25"], "med": q["0.5"], "q3": q["0.75"], "whishi": q["0.95"],
                  "mean": r["mean"]["mean"], "fliers": [], "label": f"{r['width']:g}"}
                 for r in layer["rows"] for q in [r["quantiles"]] if q is not None and None not in q.values()]
        if boxes:
            ax.bxp(boxes, showmeans=True, showfliers=False)
        else:   # means only
            ax.plot(range(1, len(layer["rows"]) + 1), [r["mean"]["mean"] for r in layer["rows"]], "^")
            ax.set_xticks(range(1, len(layer["rows"]) + 1), [f"{r['width']:g}" for r in layer["rows"]])
        ax.set(xlabel="width factor", ylabel="class selectivity", ylim=(-0.02, 1.02))
        ax.set_title(f"{s['label']}: {name} (g of the mean = {fmt_gain(layer['gains']['mean'])})", fontsize=9)
    return fig


def _mapping_figure(mapping: dict, reference: str) -> Figure | None:
    quantities = {"spanned_share": "share of the wide layer's directions spanned",
                  "mean_r2": "mean R² of the wide layer's units from the thin",
                  "cka": "linear CKA", "unspanned": "directions of the wide layer not spanned"}
    series = mapping["series"]
    fig, axes = _panels(len(quantities) * len(series), "Mappability between neighbouring widths (thin → wide)\n"
                        + ERROR_BARS, 4.5, 3.8, columns=len(quantities))
    for i, s in enumerate(series):
        widths = {r["wide"]: r["thin"] for layer in s["layers"].values() for r in layer["rows"]}
        colors = _ramp(len(s["layers"]))
        for ax, (key, ylabel) in zip(axes[i * len(quantities):], quantities.items()):
            for (name, layer), color in zip(s["layers"].items(), colors):
                if key == "unspanned":
                    _positive_curve(ax, layer["rows"], key, f"{name}: g = {fmt_gain(layer['gains'][key])}",
                                    color=color)
                else:
                    _curve(ax, layer["rows"], key, name, color)
            if key == "unspanned":
                if ax.lines:
                    ax.set_yscale("log")
            else:
                ax.set_ylim(-0.02, 1.02)
            _width_axis(ax, list(widths))
            ax.set_xticklabels([f"{widths[w]:g}→{w:g}" for w in sorted(widths)])
            ax.set_xlabel("widths (thin → wide)")
            ax.set_ylabel(ylabel, fontsize=8)
            ax.set_title(s["label"], fontsize=9)
            if ax.lines:
                ax.legend(fontsize=6)
    return fig


FIGURES = {"orders": _orders_figure, "noise": _noise_figure, "selectivity": _selectivity_figure,
           "mapping": _mapping_figure}
