"""The report of a sweep: gain tables (markdown, JSON) and the paper's figures.

    from fu_fast.report import summarize, write_report
    numbers = summarize("runs/mlp-synthetic")      # the numbers, no files
    folder = write_report("runs/mlp-synthetic")    # runs/mlp-synthetic/report/

The folder holds summary.md, report.json (summarize()'s dict, unrounded), table1.md (the paper's
Table 1: training details and accuracy per width, from the members' run.json), the paper's figures of
the sweep's preset (fu_fast.report.paper: panel specs drawn by one renderer) and each other figure the
data supports (FIGURES), all as PNG and PDF. The optional analyses a sweep carries (targeted ablation
orders, noise curves, class selectivity, similar units, and SWEEP_DIR/mapping/mapping.json) add their
sections, figures and report.json's "beyond" (fu_fast.report.beyond).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_atomic
from ..errors import FuFastError
from .beyond import beyond_markdown, summarize_beyond, write_beyond_figures
from .figures import FIGURES, write_figures
from .paper import write_paper_figures
from .table1 import TABLE1_FILE, table1_markdown
from .tables import load_sweep, markdown, reference_text, summarize_sweep

REPORT_DIR = "report"


def summarize(sweep_dir: str | Path) -> dict:
    """Per series and width: trial means and sds, gains g, per layer too, and g_min/g_max; "beyond": the
    optional analyses' numbers (fu_fast.report.beyond; {} when the sweep has none)."""
    return _summary(load_sweep(sweep_dir))


def _summary(sweep) -> dict:
    """report.json's dict: summarize_sweep's, and "beyond" (which checks every optional entry it reads)."""
    return {**summarize_sweep(sweep), "beyond": summarize_beyond(sweep)}


def write_report(sweep_dir: str | Path) -> Path:
    """Write SWEEP_DIR/report/ (every file atomically) and return that folder."""
    sweep = load_sweep(sweep_dir)
    summary = _summary(sweep)   # checks every file before writing
    folder = Path(sweep_dir) / REPORT_DIR
    if folder.is_symlink() or (folder.exists() and not folder.resolve().is_relative_to(Path(sweep_dir).resolve())):
        raise FuFastError(f"{folder} is a link: the report is written only inside the sweep directory; "
                          f"remove the link")
    if folder.exists() and not folder.is_dir():
        raise FuFastError(f"cannot write the report into {folder}: it exists and is not a directory")
    paper = write_paper_figures(sweep, folder)
    figures = write_figures(sweep, summary, folder)
    reference = reference_text(s["reference_width"] for s in summary["series"])
    beyond_figures = write_beyond_figures(summary["beyond"], folder, reference)
    write_atomic(folder / TABLE1_FILE, table1_markdown(sweep))
    write_atomic(folder / "report.json", json.dumps(summary, indent=1, allow_nan=False) + "\n")
    damaged = [(e.id, e.run_problem) for e in sweep.entries if e.run_problem is not None]
    write_atomic(folder / "summary.md", markdown(summary, figures, table1=TABLE1_FILE, damaged_runs=damaged,
                                                 paper_figures=[(spec.name, f"{spec.paper}: {spec.title}")
                                                                for spec in paper],
                                                 sections=beyond_markdown(summary["beyond"], beyond_figures,
                                                                          reference)))
    return folder


__all__ = ["summarize", "write_report", "FIGURES"]
