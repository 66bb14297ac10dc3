"""The report of a sweep: gain tables (markdown, JSON) and the paper's figures.

    from fu_fast.report import summarize, write_report
    numbers = summarize("runs/mlp-synthetic")      # the numbers, no files
    folder = write_report("runs/mlp-synthetic")    # runs/mlp-synthetic/report/

The folder holds summary.md, report.json (summarize()'s dict, unrounded) and each figure
the data supports as PNG and PDF.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_atomic
from .figures import FIGURES, write_figures
from .tables import load_sweep, markdown, summarize_sweep

REPORT_DIR = "report"


def summarize(sweep_dir: str | Path) -> dict:
    """Per series and width: trial means and sds, gains g, per layer too, and g_min/g_max."""
    return summarize_sweep(load_sweep(sweep_dir))


def write_report(sweep_dir: str | Path) -> Path:
    """Write SWEEP_DIR/report/ (every file atomically) and return that folder."""
    sweep = load_sweep(sweep_dir)
    summary = summarize_sweep(sweep)
    folder = Path(sweep_dir) / REPORT_DIR
    figures = write_figures(sweep, summary, folder)
    write_atomic(folder / "report.json", json.dumps(summary, indent=1, allow_nan=False) + "\n")
    write_atomic(folder / "summary.md", markdown(summary, figures))
    return folder


__all__ = ["summarize", "write_report", "FIGURES"]
