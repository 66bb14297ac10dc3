"""The report's numbers: a sweep directory read into series, trial statistics, gains, markdown.

Every number comes from the members' analysis.json documents (docs/result-format.md). A series is
reported normalised (each layer divided by the same layer of the series' 4x member,
docs/definitions.md) when every one of its documents carries reference units; otherwise the whole
series falls back to plain unit counts, and is labelled so: the two are never mixed
within a series.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis import AnalysisResult, LayerResult, gain
from ..errors import FuFastError
from ..sweep.runner import SWEEP_SCHEMA

REPORT_SCHEMA = "fu-fast/report/1"
QUANTITIES = ("prunability", "redundancy", "non_prunable", "non_redundant")
COLUMNS = ("parameters", "accuracy") + QUANTITIES     # the columns of a series table that get a g
HEADERS = {   # column headers: normalised series, then series in unit counts
    True: {"prunability": "prunability", "redundancy": "redundancy",
           "non_prunable": "non-prunable", "non_redundant": "non-redundant"},
    False: {"prunability": "prunable units", "redundancy": "redundant units",
            "non_prunable": "non-prunable units", "non_redundant": "non-redundant units"},
}
SD_NOTE = "sd: sample standard deviation over trials (ddof=1; 0 for a single trial)"


@dataclass
class MemberResult:
    """A done member of the sweep: its place in the series and what was measured."""
    id: str
    series: str
    model: str
    width: float
    trial: int
    variant: dict
    analysis: AnalysisResult
    histograms: dict = field(default_factory=dict)   # layer -> |r| counts; {} without correlations.json
    run: dict | None = None                          # run.json; None for an untrained member

    @property
    def accuracy(self) -> float | None:
        """The accuracy the analysis measured; else the training record's at its best epoch."""
        if self.analysis.model.get("accuracy") is not None:
            return self.analysis.model["accuracy"]
        epochs = {e.get("epoch"): e for e in (self.run or {}).get("epochs", [])}
        best = epochs.get((self.run or {}).get("best_epoch"), {})
        return best.get("test_accuracy", best.get("val_accuracy"))


@dataclass
class Sweep:
    path: Path
    name: str
    members: list[MemberResult]     # done, in the order of sweep.json
    missing: list[str]        # ids of the members that are not reported (pending, or no analysis.json)

    def series(self) -> dict[str, list[MemberResult]]:
        """The members grouped by series, series in order of first appearance."""
        groups: dict[str, list[MemberResult]] = {}
        for member in self.members:
            groups.setdefault(member.series, []).append(member)
        return groups


def load_sweep(sweep_dir: str | Path) -> Sweep:
    """Read sweep.json and every done member's documents; user mistakes raise FuFastError."""
    sweep_dir = Path(sweep_dir)
    record = _read_json(sweep_dir / "sweep.json", f"no sweep at {sweep_dir}: sweep.json not found")
    if not isinstance(record, dict) or record.get("schema") != SWEEP_SCHEMA:
        schema = record.get("schema") if isinstance(record, dict) else None
        raise FuFastError(f"{sweep_dir / 'sweep.json'} is not a fu-fast sweep record "
                          f"(schema {schema!r}, expected {SWEEP_SCHEMA!r})")
    members, missing = [], []
    for entry in record.get("members") or []:
        folder, status, fields = _member_entry(sweep_dir, entry)
        if status != "done" or not (folder / "analysis.json").exists():
            missing.append(fields[0])
            continue
        # A damaged member file is named by its reader (AnalysisResult.load names analysis.json):
        # the entry in sweep.json is fine.
        members.append(MemberResult(*fields, AnalysisResult.load(folder / "analysis.json"), _read_histograms(folder),
                              _read_run(folder / "run.json")))
    if not members:
        raise FuFastError(f"{sweep_dir}: no member of the sweep is done yet "
                          f"({len(missing)} pending); nothing to report")
    return Sweep(sweep_dir, str(record.get("name", sweep_dir.name)), members, missing)


def _member_entry(sweep_dir: Path, entry) -> tuple[Path, str, tuple]:
    """A member entry of sweep.json: its folder (inside the sweep), status, and MemberResult fields."""
    try:
        folder = sweep_dir / entry["dir"]
        if not folder.resolve().is_relative_to(sweep_dir.resolve()):
            raise ValueError(f"its dir {entry['dir']!r} lies outside the sweep")
        return folder, entry["status"], (str(entry["id"]), str(entry["series"]), str(entry["model"]),
                                         float(entry["width"]), int(entry["trial"]), dict(entry.get("variant") or {}))
    except (KeyError, TypeError, ValueError) as e:
        raise FuFastError(f"{sweep_dir / 'sweep.json'} has a malformed member entry ({_why(e)})") from None


def _read_json(path: Path, missing_message: str | None):
    """The JSON at ``path``; a missing file is an error with ``missing_message``, or None without one."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if missing_message is None:
            return None
        raise FuFastError(missing_message) from None
    except (OSError, ValueError) as e:
        raise FuFastError(f"cannot read {path}: {_one_line(e)}") from None


def _read_histograms(folder: Path) -> dict:
    path = folder / "correlations.json"
    if not path.exists():
        return {}
    document = _read_json(path, None)
    layers = document.get("layers") if isinstance(document, dict) else None
    if not isinstance(layers, dict) or not all(
            isinstance(counts, list) and all(_is_number(c) for c in counts) for counts in layers.values()):
        raise FuFastError(f"{path} is not a readable correlations document: it needs layers, each a list of counts")
    return {name: counts for name, counts in layers.items() if counts and sum(counts) > 0}


def _read_run(path: Path) -> dict | None:
    """run.json, as far as the report reads it: the epochs' accuracies and the best epoch."""
    if not path.exists():
        return None
    run = _read_json(path, None)
    if not (isinstance(run, dict) and isinstance(run.get("epochs", []), list)
            and all(isinstance(e, dict) for e in run.get("epochs", []))):
        raise FuFastError(f"{path} is not a readable run record: it needs an object with a list of epochs")
    return run


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _why(error: Exception) -> str:
    """What a KeyError, TypeError or ValueError says about a sweep.json entry, in words."""
    return f"it lacks {error}" if isinstance(error, KeyError) else _one_line(error)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


# ---------------------------------------------------------------------------------------- numbers

def is_normalized(members: list[MemberResult]) -> bool:
    return all(layer.reference_units and layer.reference_ablation_units
               for m in members for layer in m.analysis.layers.values())


def layer_values(layer: LayerResult, normalized: bool) -> dict[str, float]:
    """A layer's frivolous units and their complements, divided by its 4x size when normalised."""
    prune_scale = layer.reference_ablation_units if normalized else 1
    redund_scale = layer.reference_units if normalized else 1
    return {"prunability": layer.prunable_units / prune_scale,
            "redundancy": layer.redundant_units / redund_scale,
            "non_prunable": (layer.ablation_units - layer.prunable_units) / prune_scale,
            "non_redundant": (layer.units - layer.redundant_units) / redund_scale}


def network_values(member: MemberResult, normalized: bool) -> dict[str, float]:
    """Mean over layers, each layer weighted equally: normalised, this is the document's summary."""
    per_layer = [layer_values(layer, normalized) for layer in member.analysis.layers.values()]
    return {q: sum(v[q] for v in per_layer) / len(per_layer) for q in QUANTITIES}


def stats(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "sd": sd}


def safe_gain(widths: list[float], means: list) -> float | None:
    """fu_fast.gain, or None where g is undefined (a missing or non-positive value, one width)."""
    if any(m is None for m in means):
        return None
    try:
        return gain(widths, means)
    except ValueError:
        return None


def _gains(rows: list[dict], columns) -> dict:
    widths = [r["width"] for r in rows]
    return {c: safe_gain(widths, [r[c]["mean"] if isinstance(r[c], dict) else r[c] for r in rows])
            for c in columns}


def summarize_sweep(sweep: Sweep) -> dict:
    """The report's numbers per series (trial means and sds per width, gains) and the gain ranges."""
    series_out = []
    labels = _labels(sweep)
    for series, members in sweep.series().items():
        normalized = is_normalized(members)
        by_width: dict[float, list[MemberResult]] = {}
        for m in sorted(members, key=lambda m: (m.width, m.trial)):
            by_width.setdefault(m.width, []).append(m)
        rows, layer_rows = [], {name: [] for name in members[0].analysis.layers}
        for width, trials in by_width.items():
            values = [network_values(m, normalized) for m in trials]
            rows.append({"width": width, "trials": len(trials),
                         "parameters": round(sum(m.analysis.model["parameters"] for m in trials) / len(trials)),
                         "accuracy": stats([m.accuracy for m in trials]),
                         **{q: stats([v[q] for v in values]) for q in QUANTITIES}})
            for name, out in layer_rows.items():
                present = [layer_values(m.analysis.layers[name], normalized)
                           for m in trials if name in m.analysis.layers]
                if present:
                    out.append({"width": width, **{q: stats([v[q] for v in present]) for q in QUANTITIES}})
        first = members[0]
        series_out.append({
            "series": series, "label": labels[series], "model": first.model, "variant": first.variant,
            "normalized": normalized, "widths": list(by_width), "rows": rows, "gains": _gains(rows, COLUMNS),
            "layers": {name: {"rows": lr, "gains": _gains(lr, QUANTITIES)} for name, lr in layer_rows.items()},
        })
    return {"schema": REPORT_SCHEMA, "name": sweep.name,
            "members": {"done": len(sweep.members), "pending": len(sweep.missing), "missing": sweep.missing},
            "sd": SD_NOTE, "series": series_out, "gain_range": _gain_ranges(series_out)}


def _gain_ranges(series: list[dict]) -> dict:
    """g_min/g_max across the curves of a plot: the series (network level), series x layers (per layer)."""
    def span(gains):
        gains = [g for g in gains if g is not None]
        return {"min": min(gains), "max": max(gains)} if gains else None

    return {"network": {c: span([s["gains"][c] for s in series]) for c in COLUMNS},
            "layers": {q: span([layer["gains"][q] for s in series for layer in s["layers"].values()])
                       for q in QUANTITIES}}


def _labels(sweep: Sweep) -> dict[str, str]:
    """'model key=value ...' per series; the series id where two labels would coincide."""
    labels = {}
    for series, members in sweep.series().items():
        m = members[0]
        labels[series] = " ".join([m.model] + [f"{k}={_text(v)}" for k, v in m.variant.items()])
    if len(set(labels.values())) < len(labels):
        return {s: s for s in labels}
    return labels


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


# --------------------------------------------------------------------------------------- markdown

def fmt_stats(s: dict | None) -> str:
    return "n/a" if s is None else f"{s['mean']:.4f} ± {s['sd']:.4f}"


def fmt_gain(g: float | None) -> str:
    return "n/a" if g is None else f"{g:.4f}"


def markdown(summary: dict, figures: list[str] = ()) -> str:
    m = summary["members"]
    lines = [f"# Frivolous units: {summary['name']}", "",
             f"Members reported: {m['done']} done, {m['pending']} pending"
             + (f" (missing: {', '.join(m['missing'])})" if m["missing"] else "") + ".", "",
             "Values are means ± sd over trials at each width; " + SD_NOTE + ". "
             "g = 2^b, b the least-squares slope of log2(value) on log2(width) of the trial means "
             "(g > 2: more than doubles when the width doubles; n/a: undefined).", ""]
    for s in summary["series"]:
        head = HEADERS[s["normalized"]]
        lines += [f"## {s['label']}", "", f"Series `{s['series']}`. " + (
            "Values normalised by the same layer of the series' 4x member, mean over layers."
            if s["normalized"] else
            "**Not normalised**: the series has no 4x member, so values are unit counts "
            "(mean over layers), not comparable in scale with normalised series."), ""]
        columns = ["width", "trials", "parameters", "accuracy"] + [head[q] for q in QUANTITIES]
        lines += _table_head(columns)
        for r in s["rows"]:
            lines.append(_row([f"{r['width']:g}", str(r["trials"]), str(r["parameters"]), fmt_stats(r["accuracy"])]
                              + [fmt_stats(r[q]) for q in QUANTITIES]))
        lines.append(_row(["g", ""] + [fmt_gain(s["gains"][c]) for c in COLUMNS]))
        lines += ["", f"Per layer ({'normalised' if s['normalized'] else 'unit counts'}; "
                      "the g row after each layer's widths):", ""]
        lines += _table_head(["layer", "width"] + [head[q] for q in QUANTITIES])
        for name, layer in s["layers"].items():
            for r in layer["rows"]:
                lines.append(_row([name, f"{r['width']:g}"] + [fmt_stats(r[q]) for q in QUANTITIES]))
            lines.append(_row([name, "g"] + [fmt_gain(layer["gains"][q]) for q in QUANTITIES]))
        lines.append("")
    lines += ["## Gain ranges", "", "g_min / g_max across the curves of a plot: across the series (network), "
              "across series and layers (per layer).", ""]
    lines += _table_head(["quantity", "network g_min", "network g_max", "per-layer g_min", "per-layer g_max"])
    ranges = summary["gain_range"]
    for c in COLUMNS:
        net, lay = ranges["network"][c], ranges["layers"].get(c)
        lines.append(_row([c.replace("_", "-")] + [fmt_gain(r and r[k]) for r in (net, lay) for k in ("min", "max")]))
    if figures:
        lines += ["", "## Figures", ""] + [f"![{name}]({name}.png) ([pdf]({name}.pdf))" for name in figures]
    return "\n".join(lines) + "\n"


def _table_head(columns: list[str]) -> list[str]:
    return [_row(columns), _row(["---"] * len(columns))]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
