"""The training-past-convergence figure (the paper's Fig. E12): prunability and redundancy against
the epochs a network trained past its epochs setting, one line per width.

It is drawn for a sweep with ``epochs_after`` (docs/sweep-format.md): there, each (series, width,
trial) is one training run analysed at several epochs, and sweep.json records each member's
``epochs_after``. Values are those of the other figures: per member the mean over its layers of the
normalised layer values (each layer divided by the same layer of the series' 4x member, or its
reference width's), means and sd over trials; a group of series whose members are not all normalised
is drawn in unit counts, and says so.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from .tables import HEADERS, MemberResult, Sweep, is_normalized, network_values, stats

QUANTITIES = ("prunability", "redundancy")
TITLES = {"prunability": "Prunability", "redundancy": "Redundancy"}


def epoch_figure(sweep: Sweep, summary: dict) -> Figure | None:
    """Prunability and redundancy vs epochs past convergence, a line per width (trial means, sd error
    bars), a pair of panels per training series; None for a sweep without epochs_after members.
    ``summary`` (summarize_sweep's) is not needed: the values come from the members themselves."""
    groups: dict[str, list[tuple[int, MemberResult]]] = {}
    for member in sweep.members:
        if member.epochs_after is not None:
            key = f"{member.model} " + " ".join(f"{k}={v}" for k, v in sorted(member.variant.items()))
            groups.setdefault(key.strip(), []).append((member.epochs_after, member))
    if not groups:
        return None
    fig = Figure(figsize=(11.0, 4.2 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), 2, squeeze=False)
    fig.suptitle("Training past convergence: frivolous units vs epochs past the epochs setting")
    for row, (label, members) in zip(axes, groups.items()):
        # One scale for the whole group: normalised only if every member of it is.
        normalized = is_normalized([m for _, m in members])
        widths = sorted({m.width for _, m in members})
        colors = [colormaps["viridis"](0.9 * i / max(1, len(widths) - 1)) for i in range(len(widths))]
        for ax, quantity in zip(row, QUANTITIES):
            means = []
            for width, color in zip(widths, colors):
                points = _points([(a, m) for a, m in members if m.width == width], quantity, normalized)
                if points:
                    x, mean, sd = (np.array(v, dtype=float) for v in zip(*points))
                    means += list(mean)
                    ax.errorbar(x, mean, yerr=sd, marker="o", markersize=4, capsize=3, color=color,
                                label=f"width {width:g}")
            if means and min(means) > 0:   # widths differ by orders of magnitude, as on the width figures
                ax.set_yscale("log")
            ax.set_xticks(sorted({a for a, _ in members}))
            ax.set_xlabel("epochs past convergence (past the epochs setting)")
            reference = sweep.reference_width_of(members[0][1].series)
            scale = f"÷ units of the {reference:g}x (reference) layer" if normalized else "not normalised"
            ax.set_ylabel(f"{HEADERS[normalized][quantity]}\n({scale}, mean over layers)", fontsize=8)
            ax.set_title(f"{label}: {TITLES[quantity]}", fontsize=10)
            ax.legend(fontsize=7, title="error bars: sd over trials", title_fontsize=7)
    return fig


def _points(members: list[tuple[int, MemberResult]], quantity: str, normalized: bool) -> list[tuple]:
    """(epochs past, mean, sd) over the trials of each epoch, in epoch order."""
    by_epoch: dict[int, list[float]] = {}
    for after, member in members:
        value = network_values(member, normalized)[quantity]
        if math.isfinite(value):
            by_epoch.setdefault(after, []).append(value)
    return [(after, s["mean"], s["sd"]) for after, values in sorted(by_epoch.items())
            if (s := stats(values)) is not None]
