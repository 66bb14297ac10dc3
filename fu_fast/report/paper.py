"""The paper's figures for a sweep, as data: panel specs per preset, drawn by one generic renderer.

A sweep made from a preset (its name in sweep.json is the preset's) gets the panels of the paper's
figure for that experiment (PRESET_FIGURES); a preset this table does not know is looked up by its
"figures" metadata (paper figure ids such as "1a", "3a-b", "E4"; FIGURE_IDS); any other sweep (a TOML
configuration) gets DEFAULT_FIGURES, the paper's width-series layout.

A figure is a FigureSpec: a file name, the paper's figure id, a title and a tuple of Panels. A Panel
says what one kind of axes shows:

* ``quantities``: prunability, redundancy (frivolous units), accuracy (the analysis'), train_accuracy,
  test_accuracy (run.json, at the analysed epoch) or parameters; several give a line style each. Or one
  of two per-series plots against something else than width: ablation_curves (label agreement vs the
  fraction ablated, a line per width) and correlations (|r| violins per width), at level "series";
* ``level``: "network" (one axes, a line per series; per member the mean over its layers, each layer
  weighted equally), "layer" (an axes per layer: ``layers`` or every analysed layer, a line per series),
  "layers" (an axes per series, a line per layer) or "series" (an axes per series, for the two plots);
* ``scale``: "normalized" (÷ the units of the same layer in the series' member at the reference width,
  4x unless the sweep's configuration says otherwise, for the sweep or the series' model: the paper's
  normalisation; a series without that member falls back to unit counts, labelled "[units]"), "share"
  (÷ the layer's own units) or "units";
* ``complement``: the non-frivolous units instead (units - frivolous, on the same scale: 1 - share);
* ``xlog`` / ``ylog``: log axes (x: base 2, ticked at the sweep's widths);
* ``gains``: g of every line in the legend and g_min / g_max across the lines of the axes in its title
  (fu_fast.gain of the trial means, as summary.md).

Every line is the trial mean at each width with sd error bars (bars drawn separately, so ``ax.lines``
holds the mean lines, then the slope-1 reference where there is one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
from matplotlib.figure import Figure

from ..analysis import LayerResult
from .figures import (ERROR_BARS, _panels, _ramp, _slope_one, _width_axis, draw_ablation_curves,
                      draw_correlation_violins, remove_figure, save_figure)
from .tables import (MemberResult, Sweep, _labels, analysed_epoch, fmt_gain, gain_span, is_normalized, reference_text,
                     safe_gain, stats)

FRIVOLOUS = ("prunability", "redundancy")
ACCURACIES = ("accuracy", "train_accuracy", "test_accuracy")
PER_SERIES = ("ablation_curves", "correlations")   # plots of one series, not against width
QUANTITIES = FRIVOLOUS + ACCURACIES + ("parameters",) + PER_SERIES
LEVELS = ("network", "layer", "layers", "series")
SCALES = ("normalized", "share", "units")


@dataclass(frozen=True)
class Panel:
    quantities: tuple[str, ...]
    level: str = "network"
    scale: str = "normalized"
    complement: bool = False
    xlog: bool = True
    ylog: bool = True
    gains: bool = True
    layers: tuple[str, ...] | None = None   # level "layer": these layers (those analysed), else every one
    title: str | None = None

    def __post_init__(self):
        if isinstance(self.quantities, str):
            object.__setattr__(self, "quantities", (self.quantities,))
        unknown = [q for q in self.quantities if q not in QUANTITIES]
        if unknown or self.level not in LEVELS or self.scale not in SCALES:
            raise ValueError(f"bad panel spec: quantities {self.quantities}, level {self.level!r}, "
                             f"scale {self.scale!r}")
        if self.complement and not set(self.quantities) <= set(FRIVOLOUS):
            raise ValueError("a complement is of prunability or redundancy only")
        if (self.level == "series") != bool(set(self.quantities) & set(PER_SERIES)) or (
                self.level == "series" and len(self.quantities) != 1):
            raise ValueError(f"level 'series' is for one of {PER_SERIES} only, and they for it")


@dataclass(frozen=True)
class FigureSpec:
    name: str                      # file name without extension, in the report folder
    paper: str                     # the paper's figure id, as printed: "Fig. 3a-b"
    title: str
    panels: tuple[Panel, ...]
    columns: int = 3               # axes per row at most


# ------------------------------------------------------------------------------------------- specs

PRUNABILITY = Panel("prunability")
REDUNDANCY = Panel("redundancy")
NON_PRUNABLE = Panel("prunability", scale="share", complement=True)
NON_REDUNDANT = Panel("redundancy", scale="share", complement=True)
TRAIN_TEST = Panel(("train_accuracy", "test_accuracy"), ylog=False, gains=False)
# inception_v3_layer: the varied 35x35 module, then the last 17x17 and 8x8 modules (the paper's layers 7, 12, 13).
E5_LAYERS = ("Mixed_5d", "Mixed_6e", "Mixed_7c")


def _frivolous(name: str, paper: str, what: str) -> FigureSpec:
    return FigureSpec(name, paper, f"Prunability and redundancy vs width: {what}", (PRUNABILITY, REDUNDANCY))


FIG1A = FigureSpec("fig1a_accuracy", "Fig. 1a", "Train and test accuracy vs width", (TRAIN_TEST,))
FIG1C = FigureSpec("fig1c_accuracy", "Fig. 1c", "Train and test accuracy vs width", (TRAIN_TEST,))
FIG2 = FigureSpec("fig2", "Fig. 2", "Ablation curves (top) and |r| between units (bottom) per series",
                  (Panel("ablation_curves", level="series"), Panel("correlations", level="series")))
FIG3 = _frivolous("fig3ab", "Fig. 3a-b", "the network (mean over layers)")
FIG4 = _frivolous("fig4", "Fig. 4", "input dimension and initialisation")
FIG4C = _frivolous("fig4c", "Fig. 4c", "initialisations")
FIG4D = _frivolous("fig4d", "Fig. 4d", "10-dimensional inputs, initialisations")
# Figs. E2-E3: the non-frivolous units (Fig. E1, the parameters, is the report's parameters figure).
FIG_E2_E3 = FigureSpec("figE2-E3_complements", "Figs. E2-E3", "Non-frivolous units: the shares of units that are "
                       "not prunable, not redundant (1 - share)", (NON_PRUNABLE, NON_REDUNDANT))


def _per_layer(name: str, paper: str, what: str) -> tuple[FigureSpec, ...]:
    return tuple(FigureSpec(f"{name}_{q}", paper, f"{q.capitalize()} per layer ({what})", (Panel(q, level="layer"),))
                 for q in FRIVOLOUS)


FIG_E4 = _per_layer("figE4", "Fig. E4", "every analysed layer")
FIG_E5 = FigureSpec("figE5", "Fig. E5", "Prunability (top) and redundancy (bottom) of Mixed_5d (varied with width), "
                    "Mixed_6e and Mixed_7c", (Panel("prunability", level="layer", layers=E5_LAYERS),
                                              Panel("redundancy", level="layer", layers=E5_LAYERS)))
FIG_E6 = _per_layer("figE6", "Fig. E6", "initialisations")
FIG_E9 = _frivolous("figE9", "Fig. E9", "optimisers")
FIG_E10 = _frivolous("figE10", "Fig. E10", "batch size and learning rate scaled by k")
FIG_E11 = _frivolous("figE11", "Fig. E11", "batch size and learning rate scaled by k")
FIG_E12 = _frivolous("figE12", "Fig. E12", "a line per epochs past convergence")

# A TOML sweep (or a preset without paper figures): the paper's width-series layout (Figs. 3 and E2-E3)
# and the per-layer panels of Fig. E4.
DEFAULT_FIGURES = (
    FigureSpec("paper_width_series", "Figs. 3, E2-E3 (layout)", "Frivolous and non-frivolous units vs width",
               (PRUNABILITY, REDUNDANCY, NON_PRUNABLE, NON_REDUNDANT), columns=2),
) + _per_layer("paper_layers", "Fig. E4 (layout)", "every analysed layer")

# The presets (fu_fast.sweep.PRESETS, their "figures" metadata) and the paper's figures they draw; the
# complements (Figs. E2-E3) go with the width series of Figs. 3 and 4.
PRESET_FIGURES: dict[str, tuple[FigureSpec, ...]] = {
    "mlp-synthetic": (FIG4, FIG_E2_E3),
    "mlp-synthetic-10d": (FIG4D, FIG_E2_E3),
    "mlp-synthetic-optimizers": (FIG_E9,),
    "alexnet-cifar-unregularized": (FIG1C, FIG2),
    "alexnet-cifar-init": (FIG4C, FIG_E2_E3) + FIG_E6,
    "cifar-k": (FIG_E11,),
    "resnet18-imagenet-k": (FIG_E10,),
    "resnet18-imagenet-epochs": (FIG_E12,),   # and the epochs figure (fu_fast.report.epochs, in FIGURES)
    "inception-v3": (FIG1A, FIG3, FIG_E2_E3) + FIG_E4,
    "inception-v3-layer": (FIG_E5,),
}

# Paper figure ids (a preset's "figures" metadata) and the specs that draw them: for a preset this
# table does not know yet.
FIGURE_IDS: dict[str, tuple[FigureSpec, ...]] = {
    "1a": (FIG1A,), "1c": (FIG1C,), "2": (FIG2,), "3": (FIG3,), "3a": (FIG3,), "3b": (FIG3,),
    "4": (FIG4,), "4c": (FIG4C,), "4d": (FIG4D,), "E2": (FIG_E2_E3,), "E3": (FIG_E2_E3,),
    "E4": FIG_E4, "E5": (FIG_E5,), "E6": FIG_E6, "E9": (FIG_E9,), "E10": (FIG_E10,), "E11": (FIG_E11,),
    "E12": (FIG_E12,),
}

ALL_FIGURES = {spec.name: spec for specs in (*PRESET_FIGURES.values(), *FIGURE_IDS.values(), DEFAULT_FIGURES)
               for spec in specs}
# Files earlier versions wrote under other names, removed like a figure no longer drawn.
FORMER_NAMES = ("figE1-E3_complements",)


def figures_for(name: str) -> tuple[FigureSpec, ...]:
    """The figure specs of a sweep named ``name``: its preset's, else those of the preset's "figures"
    metadata, else the default width-series layout."""
    if name in PRESET_FIGURES:
        return PRESET_FIGURES[name]
    specs = []
    for figure_id in figure_ids(_preset_metadata(name)):
        for spec in FIGURE_IDS.get(figure_id) or FIGURE_IDS.get(figure_id.rstrip("abcdef")) or ():
            if spec not in specs:
                specs.append(spec)
    return tuple(specs) or DEFAULT_FIGURES


def _preset_metadata(name: str):
    from ..sweep import PRESETS

    preset = PRESETS.get(name)
    return preset.get("figures") if isinstance(preset, dict) else None


def figure_ids(metadata) -> list[str]:
    """Paper figure ids from a preset's "figures": a string or a list of them, each like "Fig. 1a",
    "3a-b", "E10/E11" or "Figs. E4-E5". Anything else gives no id."""
    texts = [metadata] if isinstance(metadata, str) else [m for m in metadata if isinstance(m, str)] \
        if isinstance(metadata, (list, tuple)) else []
    ids = []
    for text in texts:
        text = re.sub(r"(?i)\b(figures?|figs?)\.?", " ", text)
        for token in re.split(r"[\s,;/&+]+|\band\b", text):
            ids += _expand(token.strip(" ()."))
    return [i for i in ids if i]


def _expand(token: str) -> list[str]:
    """ "3a-b" -> 3a, 3b; "E10-E11" -> E10, E11; "E4-5" -> E4, E5; "1a" -> 1a."""
    match = re.fullmatch(r"([A-Za-z]?)(\d+)([a-z]?)(?:[-–](?:[A-Za-z]?(\d+))?([a-z]?))?", token)
    if not match:
        return []
    prefix, first, letter, last, last_letter = match.groups()
    prefix = prefix.upper()
    if last:
        return [f"{prefix}{n}" for n in range(int(first), int(last) + 1)][:20]
    if letter and last_letter:
        return [f"{prefix}{first}{chr(c)}" for c in range(ord(letter), ord(last_letter) + 1)]
    return [f"{prefix}{first}{letter}"]


# ---------------------------------------------------------------------------------------- the data

@dataclass
class Line:
    label: str
    widths: list[float]
    means: list[float]
    sds: list[float]
    gain: float | None
    color: object
    style: str


@dataclass
class AxesData:
    title: str
    ylabel: str
    panel: Panel
    lines: list[Line]
    draw: Callable | None = None   # level "series": draws the whole axes (ablation curves, violins)


NAMES = {"prunability": ("prunable", "Prunability"), "redundancy": ("redundant", "Redundancy")}
COMPLEMENT_TITLES = {"prunability": "Non-prunable units", "redundancy": "Non-redundant units"}
QUANTITY_LABELS = {"accuracy": "accuracy (analysis data)", "train_accuracy": "train accuracy",
                   "test_accuracy": "test accuracy", "parameters": "parameters"}
STYLES = ("-", "--", ":", "-.")


def layer_value(layer: LayerResult, quantity: str, scale: str, complement: bool) -> float | None:
    """Frivolous (or, complement, non-frivolous) units of a layer on ``scale``; None where undefined."""
    if quantity == "prunability":
        frivolous, total, reference = layer.prunable_units, layer.ablation_units, layer.reference_ablation_units
    else:
        frivolous, total, reference = layer.redundant_units, layer.units, layer.reference_units
    value = total - frivolous if complement else frivolous
    divisor = {"share": total, "normalized": reference, "units": 1}[scale]
    return value / divisor if divisor else None


def member_value(member: MemberResult, quantity: str, panel: Panel, scale: str,
                 layer: str | None = None) -> float | None:
    """One member's value of ``quantity``: the layer's, or the mean over its layers (layer None)."""
    if quantity in FRIVOLOUS:
        if layer is not None:
            found = member.analysis.layers.get(layer)
            return None if found is None else layer_value(found, quantity, scale, panel.complement)
        values = [layer_value(found, quantity, scale, panel.complement) for found in member.analysis.layers.values()]
        return None if not values or None in values else sum(values) / len(values)
    if quantity == "accuracy":
        return member.accuracy
    if quantity == "parameters":
        return member.analysis.model.get("parameters")
    return analysed_epoch(member.run).get(quantity)


def _line(members: list[MemberResult], quantity: str, panel: Panel, scale: str, layer: str | None,
          label: str, color, style: str) -> Line | None:
    by_width: dict[float, list[float]] = {}
    for m in sorted(members, key=lambda m: (m.width, m.trial)):
        value = member_value(m, quantity, panel, scale, layer)
        if value is not None:
            by_width.setdefault(m.width, []).append(value)
    if not by_width:
        return None
    widths = list(by_width)
    summaries = [stats(v) for v in by_width.values()]
    means, sds = [s["mean"] for s in summaries], [s["sd"] for s in summaries]
    gain = safe_gain(widths, means) if panel.gains else None
    if panel.gains:
        label = f"{label}, g = {fmt_gain(gain)}"
    return Line(label, widths, means, sds, gain, color, style)


def axes_data(panel: Panel, sweep: Sweep) -> list[AxesData]:
    """The axes a panel spec expands to for this sweep, each with its lines; axes without data left out."""
    groups = sweep.series()
    labels = {series: _plain(label) for series, label in _labels(sweep).items()}
    normalized = {s: is_normalized(members) for s, members in groups.items()}
    references = {s: sweep.reference_width_of(s) for s in groups if normalized[s]}
    layer_names = list(dict.fromkeys(name for m in sweep.members for name in m.analysis.layers))
    out = []

    def series_lines(layer: str | None) -> list[Line]:
        lines = []
        for i, (series, members) in enumerate(groups.items()):
            scale = panel.scale if panel.scale != "normalized" or normalized[series] else "units"
            tag = " [units]" if scale != panel.scale else ""
            if scale == "normalized" and len(set(references.values())) > 1:   # each series its own reference
                tag += f" (÷ {references[series]:g}x)"
            for j, quantity in enumerate(panel.quantities):
                suffix = f", {QUANTITY_LABELS.get(quantity, quantity)}" if len(panel.quantities) > 1 else ""
                line = _line(members, quantity, panel, scale, layer, labels[series] + tag + suffix, f"C{i % 10}",
                             STYLES[j % len(STYLES)])
                if line is not None:
                    lines.append(line)
        return lines

    if panel.level == "series":
        for series, members in groups.items():
            widths = sorted({m.width for m in members})
            if panel.quantities[0] == "ablation_curves":
                draw = partial(draw_ablation_curves, members=members, widths=widths)
            elif any(m.histograms for m in members):
                draw = partial(draw_correlation_violins, members=members, widths=widths)
            else:
                continue   # no correlations.json: nothing to draw
            out.append(AxesData(f"{labels[series]}: {_title(panel)}", "", panel, [], draw))
    elif panel.level == "network":
        out.append(AxesData(_title(panel), _ylabel(panel, sweep, normalized, True), panel, series_lines(None)))
    elif panel.level == "layer":
        wanted = [name for name in (panel.layers or layer_names) if name in layer_names]
        for name in wanted:
            out.append(AxesData(f"{_plain(name)}{_varied(sweep, name)}: {_title(panel)}",
                                _ylabel(panel, sweep, normalized, False), panel, series_lines(name)))
    else:
        for series, members in groups.items():
            scale = panel.scale if panel.scale != "normalized" or normalized[series] else "units"
            present = list(dict.fromkeys(name for m in members for name in m.analysis.layers))
            lines = []
            for name, color in zip(present, _ramp(len(present))):
                for j, quantity in enumerate(panel.quantities):
                    line = _line(members, quantity, panel, scale, name, _plain(name), color, STYLES[j % len(STYLES)])
                    if line is not None:
                        lines.append(line)
            out.append(AxesData(f"{labels[series]}: {_title(panel)}",
                                _ylabel(panel, sweep, {series: normalized[series]}, False), panel, lines))
    return [a for a in out if a.lines or a.draw]


def _plain(text: str) -> str:
    """Text from the sweep's files as matplotlib shows it: no math mode ($), one line."""
    return " ".join(str(text).split()).replace("$", r"\$")


def _title(panel: Panel) -> str:
    if panel.title:
        return panel.title
    if len(panel.quantities) == 1 and panel.quantities[0] in FRIVOLOUS:
        quantity = panel.quantities[0]
        return COMPLEMENT_TITLES[quantity] if panel.complement else NAMES[quantity][1]
    if panel.quantities[0] in PER_SERIES:
        return {"ablation_curves": "ablation curves", "correlations": "|r| between units"}[panel.quantities[0]]
    return " and ".join(QUANTITY_LABELS.get(q, q) for q in panel.quantities).capitalize()


def _ylabel(panel: Panel, sweep: Sweep, normalized: dict[str, bool], network: bool) -> str:
    quantity = panel.quantities[0]
    if quantity not in FRIVOLOUS:
        return "accuracy" if set(panel.quantities) <= set(ACCURACIES) else QUANTITY_LABELS[quantity]
    adjective = NAMES[quantity][0]
    what = f"non-{adjective}" if panel.complement else adjective
    reference = reference_text(sweep.reference_width_of(series) for series in
                               [s for s in normalized if normalized[s]] or normalized)
    if panel.scale == "share":
        text = f"{what} share (1 - {adjective} units / units)" if panel.complement else f"{what} units / units"
    elif panel.scale == "units" or not any(normalized.values()):
        text = f"{what} units" + ("" if panel.scale == "units" else f" (no {reference} member: not normalised)")
    else:
        text = f"{what} units ÷ units of the {reference} layer" + (
            "" if all(normalized.values()) else " ([units]: not normalised)")
    return text + (" (mean over layers)" if network else "")


def _varied(sweep: Sweep, layer: str) -> str:
    """" (varied)" when the layer's units change with width in some series, " (fixed)" when they never do."""
    varied = False
    for members in sweep.series().values():
        units = {m.width: m.analysis.layers[layer].units for m in members if layer in m.analysis.layers}
        varied |= len(set(units.values())) > 1
    widths = {m.width for m in sweep.members if layer in m.analysis.layers}
    return "" if len(widths) < 2 else " (varied)" if varied else " (fixed)"


# ------------------------------------------------------------------------------------- the drawing

def render(spec: FigureSpec, sweep: Sweep) -> Figure | None:
    """Draw ``spec`` for ``sweep``; None when no panel has data."""
    axes = [a for panel in spec.panels for a in axes_data(panel, sweep)]
    if not axes:
        return None
    fig, mpl_axes = _panels(len(axes), f"{spec.paper}: {spec.title} ({_plain(sweep.name)})", 4.8, 3.9,
                            columns=spec.columns)
    for ax, data in zip(mpl_axes, axes):
        _draw(ax, data)
    return fig


def _draw(ax, data: AxesData) -> None:
    panel = data.panel
    if data.draw is not None:
        data.draw(ax)
        ax.set_title(data.title, fontsize=9)
        return
    positive = any(m > 0 for line in data.lines for m in line.means)
    for line in data.lines:
        w, mean, sd = (np.asarray(v, dtype=float) for v in (line.widths, line.means, line.sds))
        ax.errorbar(w, mean, yerr=sd, fmt="none", ecolor=line.color, elinewidth=1, alpha=0.7)
        ax.plot(w, mean, linestyle=line.style, marker="o", markersize=4, color=line.color, label=line.label)
    title = data.title
    if panel.ylog and positive:
        ax.set_yscale("log")
        if panel.scale != "share" and set(panel.quantities) <= set(FRIVOLOUS):
            _slope_one(ax, [(w, m) for line in data.lines for w, m in zip(line.widths, line.means)])
    elif panel.ylog:
        title += " (nothing positive: linear y axis)"
    widths = [w for line in data.lines for w in line.widths]
    if panel.xlog:
        _width_axis(ax, widths)
    else:
        ax.set_xlabel("width factor")
    if panel.gains:
        span = gain_span(line.gain for line in data.lines)
        title += "\n" + ("g_min = n/a, g_max = n/a" if span is None else
                         f"g_min = {fmt_gain(span['min'])}, g_max = {fmt_gain(span['max'])}")
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(data.ylabel, fontsize=8)
    ax.legend(fontsize=6, title=ERROR_BARS, title_fontsize=6,
              ncol=max(1, -(-len(data.lines) // 12)))


def write_paper_figures(sweep: Sweep, out_dir: Path) -> list[FigureSpec]:
    """Draw the sweep's paper figures into ``out_dir`` as PNG and PDF; returns the specs drawn. Files of
    paper figures this sweep no longer draws (another name, data gone) are removed."""
    written = []
    for spec in figures_for(sweep.name):
        fig = render(spec, sweep)
        if fig is not None:
            save_figure(fig, out_dir, spec.name)
            written.append(spec)
    drawn = {spec.name for spec in written}
    for name in (*ALL_FIGURES, *FORMER_NAMES):
        if name not in drawn:
            remove_figure(out_dir, name)
    return written
