"""The report's own figures (FIGURES), drawn for every sweep: accuracy, ablation curves, |r| violins,
prunability and redundancy (network and per layer), non-frivolous units, parameters, and the epochs figure
(fu_fast.report.epochs). The paper's figures of a preset are panel specs drawn by
fu_fast.report.paper, which uses the helpers here.

Figures are drawn on matplotlib.figure.Figure directly, which needs no pyplot and no
interactive backend; each is written as PNG and PDF, atomically. A figure the data does not
support (no accuracy, no correlations.json, nothing positive to put on a log axis) is not made.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from ..atomic import atomic_file
from .epochs import epoch_figure
from .tables import HEADERS, Sweep, fmt_gain, reference_text

DPI = 120
ERROR_BARS = "error bars: sd over trials"
TITLES = {"prunability": "Prunability", "redundancy": "Redundancy",
          "non_prunable": "Non-prunable units", "non_redundant": "Non-redundant units"}


def write_figures(sweep: Sweep, summary: dict, out_dir: Path) -> list[str]:
    """Draw every supported figure into ``out_dir``; returns their names (without extension)."""
    written = []
    for name, draw in FIGURES.items():
        fig = draw(sweep, summary)
        if fig is None:   # a figure of an earlier report that the data no longer supports
            remove_figure(out_dir, name)
            continue
        save_figure(fig, out_dir, name)
        written.append(name)
    return written


def remove_figure(out_dir: Path, name: str) -> None:
    """out_dir/name.png and out_dir/name.pdf gone, if there: an earlier report's figure not drawn now."""
    for ext in ("png", "pdf"):
        (out_dir / f"{name}.{ext}").unlink(missing_ok=True)


def save_figure(fig: Figure, out_dir: Path, name: str) -> None:
    """``fig`` as out_dir/name.png and out_dir/name.pdf, each written atomically."""
    for ext in ("png", "pdf"):
        with atomic_file(out_dir / f"{name}.{ext}") as f:
            # No creation date in the PDF, so the same sweep gives the same file.
            fig.savefig(f, format=ext, dpi=DPI, metadata={"CreationDate": None} if ext == "pdf" else None)


# ----------------------------------------------------------------------------------------- helpers

def _panels(count: int, title: str | None, width: float = 5.0, height: float = 4.0, columns: int = 3):
    """A figure with ``count`` axes in a grid of at most ``columns`` columns (unused cells removed);
    ``title`` over them all (None for a single panel, whose own title says it all)."""
    cols = max(1, min(columns, count))
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.remove()
    if title:
        fig.suptitle(title)
    return fig, list(axes[:count])


def _width_axis(ax, widths) -> None:
    """log2 width axis, ticked at the widths of the sweep."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(widths))
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{w:g}" for w in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("width factor")


def _curve(ax, rows: list[dict], key: str, label: str, color) -> None:
    """Trial means with sd error bars against width (widths without a value are left out)."""
    points = [(r["width"], r[key]["mean"], r[key]["sd"]) for r in rows if r.get(key)]
    if points:
        w, mean, sd = (np.array(v) for v in zip(*points))
        ax.errorbar(w, mean, yerr=sd, marker="o", markersize=4, capsize=3, color=color, label=label)


def _means(rows: list[dict], key: str) -> list[tuple[float, float]]:
    return [(r["width"], r[key]["mean"]) for r in rows if r.get(key)]


def _slope_one(ax, points: list[tuple[float, float]]) -> None:
    """Dashed reference of slope 1 on log-log axes (g = 2), through the middle of the data."""
    points = [(w, v) for w, v in points if v > 0]
    if not points:
        return
    w, v = (np.array(p) for p in zip(*points))
    scale = np.exp(np.mean(np.log(v)) - np.mean(np.log(w)))
    x = np.array([w.min(), w.max()])
    ax.plot(x, scale * x, "k--", linewidth=1, alpha=0.6, label="slope 1 (g = 2)")


def _range_text(span: dict | None) -> str:
    return "" if span is None else f" (g_min = {fmt_gain(span['min'])}, g_max = {fmt_gain(span['max'])})"


def _ylabel(quantity: str, series: list[dict]) -> str:
    normalized = [s for s in series if s["normalized"]]
    reference = reference_text(s["reference_width"] for s in normalized or series)
    if all(s["normalized"] for s in series):
        return f"{HEADERS[True][quantity]} (÷ units of the {reference} layer)"
    if not any(s["normalized"] for s in series):
        return f"{HEADERS[False][quantity]} (no {reference} member: not normalised)"
    return f"{HEADERS[True][quantity]} (÷ {reference} units; [units]: not normalised)"


def _series_label(s: dict, mixed: bool, g: float | None, own_reference: bool = False) -> str:
    """The legend entry of a series: [units] among normalised series, its reference width (÷ 0.5x)
    where the series of the panel have several."""
    tag = " [units]" if mixed and not s["normalized"] else ""
    tag += f" (÷ {s['reference_width']:g}x)" if own_reference and s["normalized"] else ""
    return f"{s['label']}{tag}, g = {fmt_gain(g)}"


def _has_positive(rows_list, key) -> bool:
    return any(r.get(key) and r[key]["mean"] > 0 for rows in rows_list for r in rows)


def _log_log_panel(ax, summary: dict, quantity: str) -> None:
    """One quantity against width on log-log axes: a line per series, g in the legend."""
    series = summary["series"]
    mixed = len({s["normalized"] for s in series}) > 1
    own_reference = len({s["reference_width"] for s in series if s["normalized"]}) > 1
    for i, s in enumerate(series):
        _curve(ax, s["rows"], quantity, _series_label(s, mixed, s["gains"][quantity], own_reference), f"C{i}")
    _slope_one(ax, [p for s in series for p in _means(s["rows"], quantity)])
    ax.set_yscale("log")
    _width_axis(ax, [w for s in series for w in s["widths"]])
    ax.set_ylabel(_ylabel(quantity, series))
    ax.set_title(f"{TITLES[quantity]} vs width" + _range_text(summary["gain_range"]["network"][quantity]),
                 fontsize=10)
    ax.legend(fontsize=7, title=ERROR_BARS, title_fontsize=7)


# ----------------------------------------------------------------------------------------- figures

def accuracy(sweep: Sweep, summary: dict) -> Figure | None:
    series = summary["series"]
    if not any(r["accuracy"] for s in series for r in s["rows"]):
        return None
    fig, (ax,) = _panels(1, None, 6.5, 4.5)
    for i, s in enumerate(series):
        _curve(ax, s["rows"], "accuracy", s["label"], f"C{i}")
    _width_axis(ax, [w for s in series for w in s["widths"]])
    ax.set_ylabel("accuracy on the analysis data")
    ax.set_title("Accuracy vs width", fontsize=10)
    ax.legend(fontsize=7, title=ERROR_BARS, title_fontsize=7)
    return fig


def ablation_curves(sweep: Sweep, summary: dict) -> Figure | None:
    """Label agreement vs fraction ablated per width: mean over trials, repeats and layers."""
    groups = sweep.series()
    fig, axes = _panels(len(groups), "Ablation curves (mean over trials, repeats and layers)")
    for ax, s in zip(axes, summary["series"]):
        draw_ablation_curves(ax, groups[s["series"]], s["widths"])
        ax.set_title(s["label"], fontsize=10)
    return fig


def draw_ablation_curves(ax, members: list, widths: list[float]) -> None:
    """One series' ablation curves on ``ax``, a line per width (mean over trials, repeats and layers)."""
    grid = np.asarray(members[0].analysis.settings["levels"], dtype=float)
    colors = _ramp(len(widths))
    for width, color in zip(widths, colors):
        curves = [np.interp(grid, m.analysis.settings["levels"],   # one grid, should settings differ
                            np.mean([np.mean(layer.curves, axis=0)
                                     for layer in m.analysis.layers.values()], axis=0))
                  for m in members if m.width == width]
        ax.plot(grid, np.mean(curves, axis=0), color=color, label=f"width {width:g}")
    tolerance = members[0].analysis.settings.get("tolerance")
    if tolerance is not None:
        ax.axhline(1 - tolerance, color="k", linestyle=":", linewidth=1, label=f"1 - t = {1 - tolerance:g}")
    ax.set(xlabel="fraction of units ablated", ylabel="label agreement with the intact network",
           xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=7)


def correlation_violins(sweep: Sweep, summary: dict) -> Figure | None:
    """|r| between unit pairs per width, from the histograms (each layer and trial weighted equally)."""
    groups = sweep.series()
    if not any(m.histograms for m in sweep.members):
        return None
    fig, axes = _panels(len(groups), "Correlation |r| between units (trials and layers merged)")
    for ax, s in zip(axes, summary["series"]):
        draw_correlation_violins(ax, groups[s["series"]], s["widths"])
        ax.set_title(s["label"], fontsize=10)
    return fig


def draw_correlation_violins(ax, members: list, widths: list[float]) -> bool:
    """One series' |r| violins on ``ax``, one per width; False when it has no histograms."""
    positions, vpstats, colors = [], [], []
    for width, color in zip(widths, _ramp(len(widths))):
        hists = [np.asarray(c, float) / sum(c) for m in members if m.width == width for c in m.histograms.values()]
        if hists:
            positions.append(math.log2(width))
            vpstats.append(_violin_stats(np.mean(hists, axis=0)))
            colors.append(color)
    if vpstats:
        spacing = min(np.diff(positions), default=1.0)   # positions are log2 widths, spaced as the sweep's
        parts = ax.violin(vpstats, positions=positions, widths=0.7 * spacing, showmedians=True,
                          showextrema=True)
        for body, color in zip(parts["bodies"], colors):
            body.set_facecolor(color)
            body.set_alpha(0.7)
        for lines in ("cbars", "cmins", "cmaxes", "cmedians"):
            parts[lines].set(color="k", linewidth=0.8)
    ax.set_xticks([math.log2(w) for w in widths])
    ax.set_xticklabels([f"{w:g}" for w in widths])
    ax.set(xlabel="width factor", ylabel="|r|", ylim=(0, 1))
    return bool(vpstats)


def _violin_stats(mass: np.ndarray) -> dict:
    """Axes.violin statistics from a probability mass over equal bins of [0, 1].

    The outline is lightly smoothed over 5 bins, as the kernel density estimate of a violin
    plot would be (a narrow layer has few pairs, and its raw histogram is spiky); the mean,
    median and extremes come from the unsmoothed counts.
    """
    edges = np.linspace(0.0, 1.0, len(mass) + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    density = np.convolve(mass * len(mass), np.array([1, 2, 3, 2, 1]) / 9, mode="same")
    nonzero = np.flatnonzero(mass)
    lo, hi = nonzero[0], nonzero[-1]
    low, high = edges[lo], edges[hi + 1]   # the violin spans the occupied bins only
    cumulative = np.cumsum(mass)
    half = min(int(np.searchsorted(cumulative, 0.5)), len(mass) - 1)   # the bin holding the median
    median = edges[half] + (0.5 - (cumulative[half] - mass[half])) / mass[half] * (edges[1] - edges[0])
    return {"coords": np.concatenate([[low], centres[lo:hi + 1], [high]]),
            "vals": np.concatenate([[density[lo]], density[lo:hi + 1], [density[hi]]]),
            "mean": float(np.sum(mass * centres)), "median": float(median), "min": low, "max": high}


def _ramp(count: int) -> list:
    """``count`` colours from dark to light (viridis, its pale yellow end left out)."""
    return [colormaps["viridis"](0.9 * i / max(1, count - 1)) for i in range(count)]


def _network(quantity: str) -> Callable[[Sweep, dict], Figure | None]:
    def draw(sweep: Sweep, summary: dict) -> Figure | None:
        if not _has_positive([s["rows"] for s in summary["series"]], quantity):
            return None
        fig, (ax,) = _panels(1, None, 6.5, 4.5)
        _log_log_panel(ax, summary, quantity)
        return fig
    return draw


def _per_layer(quantity: str) -> Callable[[Sweep, dict], Figure | None]:
    """One panel per series, a line per layer (coloured by depth), g in the legend."""
    def draw(sweep: Sweep, summary: dict) -> Figure | None:
        series = summary["series"]
        if not _has_positive([layer["rows"] for s in series for layer in s["layers"].values()], quantity):
            return None
        title = f"{TITLES[quantity]} per layer" + _range_text(summary["gain_range"]["layers"][quantity])
        fig, axes = _panels(len(series), title)
        for ax, s in zip(axes, series):
            layers = s["layers"]
            colors = _ramp(len(layers))
            for (name, layer), color in zip(layers.items(), colors):
                _curve(ax, layer["rows"], quantity, f"{name}: g = {fmt_gain(layer['gains'][quantity])}", color)
            _slope_one(ax, [p for layer in layers.values() for p in _means(layer["rows"], quantity)])
            ax.set_yscale("log")
            _width_axis(ax, s["widths"])
            ax.set_ylabel(HEADERS[s["normalized"]][quantity]
                          + (f" (÷ {s['reference_width']:g}x units)" if s["normalized"] else " (not normalised)"))
            ax.set_title(s["label"], fontsize=10)
            ax.legend(fontsize=6, ncol=max(1, math.ceil(len(layers) / 12)), title=ERROR_BARS, title_fontsize=6)
        return fig
    return draw


def non_frivolous(sweep: Sweep, summary: dict) -> Figure | None:
    rows = [s["rows"] for s in summary["series"]]
    if not (_has_positive(rows, "non_prunable") or _has_positive(rows, "non_redundant")):
        return None
    fig, axes = _panels(2, "Non-frivolous units vs width (mean over layers)", 6.0, 4.5)
    for ax, quantity in zip(axes, ("non_prunable", "non_redundant")):
        _log_log_panel(ax, summary, quantity)
    return fig


def parameters(sweep: Sweep, summary: dict) -> Figure | None:
    series = summary["series"]
    fig, (ax,) = _panels(1, None, 6.5, 4.5)
    for i, s in enumerate(series):
        ax.plot(s["widths"], [r["parameters"] for r in s["rows"]], marker="o", markersize=4, color=f"C{i}",
                label=f"{s['label']}, g = {fmt_gain(s['gains']['parameters'])}")
    _slope_one(ax, [(r["width"], r["parameters"]) for s in series for r in s["rows"]])
    ax.set_yscale("log")
    _width_axis(ax, [w for s in series for w in s["widths"]])
    ax.set_ylabel("parameters")
    ax.set_title("Parameters vs width" + _range_text(summary["gain_range"]["network"]["parameters"]), fontsize=10)
    ax.legend(fontsize=7)
    return fig


FIGURES: dict[str, Callable[[Sweep, dict], Figure | None]] = {
    "accuracy": accuracy,
    "ablation_curves": ablation_curves,
    "correlation_violins": correlation_violins,
    "prunability": _network("prunability"),
    "redundancy": _network("redundancy"),
    "prunability_layers": _per_layer("prunability"),
    "redundancy_layers": _per_layer("redundancy"),
    "non_frivolous": non_frivolous,
    "parameters": parameters,
    "epochs": epoch_figure,
}
