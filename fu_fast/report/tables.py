"""The report's numbers: a sweep directory read into series, trial statistics, gains, markdown.

Every number comes from the members' analysis.json documents (docs/result-format.md). A series is
reported normalised (each layer divided by the same layer of the series' 4x member, or of its
reference_width member, docs/definitions.md) when every one of its documents carries reference
units; otherwise the whole
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
from ..sweep.config import REFERENCE_WIDTH
from ..sweep.runner import SWEEP_SCHEMA
from ..train.checkpoint import RUN_SCHEMA

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
    run: dict | None = None                          # run.json; None for an untrained member (or a damaged record)
    epochs_after: int | None = None                  # sweep.json's, for a sweep with epochs_after (an int); else None

    @property
    def accuracy(self) -> float | None:
        """The accuracy the analysis measured; else the training record's at its best epoch."""
        if self.analysis.model.get("accuracy") is not None:
            return self.analysis.model["accuracy"]
        epochs = {e.get("epoch"): e for e in (self.run or {}).get("epochs", [])}
        best = epochs.get((self.run or {}).get("best_epoch"), {})
        return best.get("test_accuracy", best.get("val_accuracy"))


@dataclass
class MemberEntry:
    """A member as sweep.json lists it, done or not, with its training record (run.json) if readable."""
    id: str
    series: str
    model: str
    width: float
    trial: int
    variant: dict
    status: str                   # sweep.json's: "done" or "pending"
    folder: Path
    run: dict | None = None       # run.json, checked (RUN_TYPES); None if absent or damaged
    run_problem: str | None = None   # why run.json could not be used (it exists but is damaged)


@dataclass
class Sweep:
    path: Path
    name: str
    members: list[MemberResult]     # done, in the order of sweep.json
    missing: list[str]        # ids of the members that are not reported (pending, or no analysis.json)
    entries: list[MemberEntry] = field(default_factory=list)   # every member of sweep.json, in its order
    reference_width: float = REFERENCE_WIDTH   # the width whose layers normalise a series (config reference_width)
    model_reference_widths: dict = field(default_factory=dict)   # a model's own (config [model.NAME])

    def reference_width_of(self, series: str) -> float:
        """The width whose layers normalise ``series`` (one of self.series()): its model's own, or the sweep's."""
        model = next(m.model for m in self.members if m.series == series)
        return self.model_reference_widths.get(model, self.reference_width)

    def series(self) -> dict[str, list[MemberResult]]:
        """The members grouped by series, series in order of first appearance."""
        groups: dict[str, list[MemberResult]] = {}
        for member in self.members:
            groups.setdefault(member.series, []).append(member)
        return groups


def load_sweep(sweep_dir: str | Path) -> Sweep:
    """Read sweep.json and every done member's documents; user mistakes raise FuFastError."""
    sweep_dir = Path(sweep_dir)
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise FuFastError(f"{sweep_dir} is a file, not a sweep directory")
    record = _read_json(sweep_dir / "sweep.json", f"no sweep at {sweep_dir}: sweep.json not found")
    if not isinstance(record, dict) or record.get("schema") != SWEEP_SCHEMA:
        schema = record.get("schema") if isinstance(record, dict) else None
        raise FuFastError(f"{sweep_dir / 'sweep.json'} is not a fu-fast sweep record "
                          f"(schema {schema!r}, expected {SWEEP_SCHEMA!r})")
    listed = record.get("members") or []
    if not isinstance(listed, list):
        raise FuFastError(f"{sweep_dir / 'sweep.json'} has a malformed member list (a {type(listed).__name__}, "
                          f"not a list)")
    members, missing, entries = [], [], []
    for entry in listed:
        folder, status, fields = _member_entry(sweep_dir, entry)
        # A damaged training record does not stop the report: the analysis holds what it shows, and
        # table1.md names the member and what is wrong with its record.
        run, problem = read_run_record(folder / "run.json")
        entries.append(MemberEntry(*fields, status=str(status), folder=folder, run=run, run_problem=problem))
        if status != "done" or not (folder / "analysis.json").exists():
            missing.append(fields[0])
            continue
        # A damaged member file is named by its reader (AnalysisResult.load names analysis.json):
        # the entry in sweep.json is fine.
        analysis = AnalysisResult.load(folder / "analysis.json")
        _check_analysis(folder / "analysis.json", analysis)
        after = entry.get("epochs_after")
        members.append(MemberResult(*fields, analysis, _read_histograms(folder), run,
                                    after if isinstance(after, int) and not isinstance(after, bool) else None))
    if not members:
        raise FuFastError(f"{sweep_dir}: no member of the sweep is done yet "
                          f"({len(missing)} pending); nothing to report")
    name = record.get("name")
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    reference = _recorded_reference_width(sweep_dir, config, "config.reference_width", REFERENCE_WIDTH)
    # A record written before [model.NAME] tables existed has none: every series has the sweep's.
    tables = config.get("model", {})
    if not isinstance(tables, dict) or not all(isinstance(table, dict) for table in tables.values()):
        raise FuFastError(f"{sweep_dir / 'sweep.json'}: config.model is {str(tables)[:40]!r}, not a table of "
                          f"model tables")
    own = {model: _recorded_reference_width(sweep_dir, table, f"config.model.{model}.reference_width", None)
           for model, table in tables.items() if "reference_width" in table}
    return Sweep(sweep_dir, name if isinstance(name, str) and name else sweep_dir.name, members, missing, entries,
                 reference, own)


def _recorded_reference_width(sweep_dir: Path, table: dict, where: str, default) -> float:
    reference = table.get("reference_width", default)
    if not (is_finite(reference) and reference > 0):
        raise FuFastError(f"{sweep_dir / 'sweep.json'}: {where} is {str(reference)[:40]!r}, not a positive number")
    return float(reference)


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


def refuse_document(path, document: str, where: str, value, noun: str):
    """FuFastError: the ``document`` (analysis, mapping) at ``path`` has at ``where`` a value that is not ``noun``."""
    raise FuFastError(f"{path} is not a usable {document} document: {where} is {str(value)[:40]!r}, not {noun}")


def is_finite(value) -> bool:
    return _is_number(value) and math.isfinite(value)


def is_whole(value, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _check_analysis(path: Path, result: AnalysisResult) -> None:
    """The values of an analysis document the report computes with have the types it needs: FuFastError
    naming the file and the entry otherwise (the document may come from elsewhere, or be hand-edited)."""
    def refuse(where: str, value, noun: str):
        refuse_document(path, "analysis", where, value, noun)

    if not isinstance(result.model, dict) or not isinstance(result.settings, dict):
        refuse("model or settings", type(result.model).__name__, "an object")
    if not is_whole(result.model.get("parameters")):
        refuse("model.parameters", result.model.get("parameters"), "a whole number")
    accuracy = result.model.get("accuracy")
    if accuracy is not None and not is_finite(accuracy):
        refuse("model.accuracy", accuracy, "a number or null")
    levels = result.settings.get("levels")
    if not (isinstance(levels, list) and levels and all(is_finite(v) for v in levels)):
        refuse("settings.levels", levels, "a list of numbers")
    if result.settings.get("tolerance") is not None and not is_finite(result.settings["tolerance"]):
        refuse("settings.tolerance", result.settings["tolerance"], "a number")
    if not result.layers:
        refuse("layers", [], "a non-empty list of layers")
    for name, layer in result.layers.items():
        where = f"layer {str(name)[:40]!r}"
        for key, least in (("units", 1), ("ablation_units", 1), ("redundant_units", 0)):
            if not is_whole(getattr(layer, key), least):
                refuse(f"{where} {key}", getattr(layer, key), f"a whole number >= {least}")
        for key in ("reference_units", "reference_ablation_units"):
            if getattr(layer, key) is not None and not is_whole(getattr(layer, key), 1):
                refuse(f"{where} {key}", getattr(layer, key), "a whole number >= 1 or null")
        if not (is_finite(layer.prunable_fraction) and 0 <= layer.prunable_fraction <= 1):
            refuse(f"{where} prunable_fraction", layer.prunable_fraction, "a number in [0, 1]")
        if not (isinstance(layer.curves, list) and layer.curves and all(
                isinstance(c, list) and len(c) == len(levels) and all(is_finite(v) for v in c) for c in layer.curves)):
            refuse(f"{where} curves", layer.curves, f"a list of curves of {len(levels)} numbers (the levels)")


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


# The fields of run.json (fu_fast.train.checkpoint) the report reads, with the types it accepts; each may be
# absent (the report then says n/a). "?" marks an optional value (null allowed).
RUN_TYPES = {"status": str, "best_epoch": "int?", "stopped_early": bool, "epochs": list, "settings": dict,
             "model": dict}
MODEL_TYPES = {"parameters": int}
SETTINGS_TYPES = {"optimizer": str, "lr": float, "momentum": float, "weight_decay": float, "schedule": str,
                  "batch_size": int, "k": float, "epochs": int, "patience": "int?", "augment": "bool?",
                  "model_options": dict, "random_labels": bool}
OPTION_TYPES = {"dropout": "float?", "init": "str?"}


def read_run_record(path: Path) -> tuple[dict | None, str | None]:
    """run.json at ``path``, checked as far as the report reads it: (record, None), (None, None) when
    there is none, or (None, what is wrong, in one line) for a damaged or foreign one. Never raises:
    one damaged training record must not stop the report of the rest."""
    run, problem = _check_run(path)
    return run, (None if problem is None else " ".join(problem.split()).replace("`", "'"))


def _check_run(path: Path) -> tuple[dict | None, str | None]:
    if not path.exists():
        return None, None
    try:
        run = json.loads(path.read_text(), parse_constant=_no_constant)
    except (OSError, ValueError) as e:
        return None, f"cannot read it ({_one_line(e)[:200]})"
    if not isinstance(run, dict):
        return None, f"it holds a {_kind(run)}, not a run record"
    if run.get("schema") != RUN_SCHEMA:
        schema = str(run.get("schema"))[:60]
        return None, f"it is not a fu-fast run record (schema {schema!r}, expected {RUN_SCHEMA!r})"
    problem = (_type_problem(run, RUN_TYPES, "")
               or _type_problem(run.get("model", {}), MODEL_TYPES, "model.")
               or _type_problem(run.get("settings", {}), SETTINGS_TYPES, "settings.")
               or _type_problem(run.get("settings", {}).get("model_options", {}), OPTION_TYPES,
                                "settings.model_options."))
    if problem:
        return None, problem
    for i, epoch in enumerate(run.get("epochs", [])):
        if not isinstance(epoch, dict):
            return None, f"epochs[{i}] is a {_kind(epoch)}, not an object"
        for key, value in epoch.items():
            if (key == "epoch" or key.endswith("_accuracy")) and not (
                    is_finite(value) and (key != "epoch" or isinstance(value, int))):
                noun = "a whole number" if key == "epoch" else "a finite number"
                return None, f"epochs[{i}].{key} is {str(value)[:40]!r}, not {noun}"
    return run, None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _type_problem(record: dict, types: dict, prefix: str) -> str | None:
    for key, kind in types.items():
        if key not in record:
            continue
        value, optional = record[key], isinstance(kind, str) and kind.endswith("?")
        if optional and value is None:
            continue
        wanted = {"int?": int, "float?": float, "bool?": bool, "str?": str}.get(kind, kind)
        if wanted is float:
            good = is_finite(value)
        elif wanted is int:
            good = isinstance(value, int) and not isinstance(value, bool)
        else:
            good = isinstance(value, wanted)
        if not good:
            noun = {int: "a whole number", float: "a number", bool: "true or false", str: "a string",
                    list: "a list", dict: "an object"}[wanted]
            return f"{prefix}{key} is {str(value)[:40]!r}, not {noun}" + (" or null" if optional else "")
    return None


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def analysed_epoch(run: dict | None) -> dict:
    """The metrics of the epoch whose weights were analysed: the best epoch, else the last; {} if none."""
    epochs = (run or {}).get("epochs") or []
    best = [e for e in epochs if e.get("epoch") == (run or {}).get("best_epoch")]
    return best[-1] if best else (epochs[-1] if epochs else {})


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


def group_by_width(members: list) -> dict[float, list]:
    """Members (MemberResult or MemberEntry) by width, widths ascending, each width's in trial order."""
    groups: dict[float, list] = {}
    for m in sorted(members, key=lambda m: (m.width, m.trial)):
        groups.setdefault(m.width, []).append(m)
    return groups


def summarize_sweep(sweep: Sweep) -> dict:
    """The report's numbers per series (trial means and sds per width, gains) and the gain ranges."""
    series_out = []
    labels = _labels(sweep)
    for series, members in sweep.series().items():
        normalized = is_normalized(members)
        by_width = group_by_width(members)
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
            "normalized": normalized, "reference_width": sweep.reference_width_of(series),
            "widths": list(by_width), "rows": rows, "gains": _gains(rows, COLUMNS),
            "layers": {name: {"rows": lr, "gains": _gains(lr, QUANTITIES)} for name, lr in layer_rows.items()},
        })
    return {"schema": REPORT_SCHEMA, "name": sweep.name,
            "members": {"done": len(sweep.members), "pending": len(sweep.missing), "missing": sweep.missing},
            "sd": SD_NOTE, "series": series_out, "gain_range": _gain_ranges(series_out)}


def _gain_ranges(series: list[dict]) -> dict:
    """g_min/g_max across the curves of a plot: the series (network level), series x layers (per layer)."""
    return {"network": {c: gain_span([s["gains"][c] for s in series]) for c in COLUMNS},
            "layers": {q: gain_span([layer["gains"][q] for s in series for layer in s["layers"].values()])
                       for q in QUANTITIES}}


def gain_span(gains) -> dict | None:
    """{"min", "max"} of the gains that are defined; None when none is."""
    gains = [g for g in gains if g is not None]
    return {"min": min(gains), "max": max(gains)} if gains else None


def _labels(sweep: Sweep) -> dict[str, str]:
    """'model key=value ...' per series; the series id where two labels would coincide."""
    return series_labels({series: (members[0].model, members[0].variant)
                          for series, members in sweep.series().items()})


def series_labels(series: dict[str, tuple[str, dict]]) -> dict[str, str]:
    """'model key=value ...' per series id, from (model, variant); the ids where two labels would coincide."""
    labels = {s: " ".join([model] + [f"{k}={_text(v)}" for k, v in variant.items()])
              for s, (model, variant) in series.items()}
    if len(set(labels.values())) < len(labels):
        return {s: s for s in labels}
    return labels


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def reference_text(widths) -> str:
    """The reference width of some series as a label names it: "4x", or "reference (0.5x, 4x)" when
    they have several (each series is normalised by its own)."""
    distinct = sorted(set(widths))
    if len(distinct) == 1:
        return f"{distinct[0]:g}x"
    return "reference (" + ", ".join(f"{w:g}x" for w in distinct) + ")"


# --------------------------------------------------------------------------------------- markdown

def fmt_stats(s: dict | None) -> str:
    return "n/a" if s is None else f"{s['mean']:.4f} ± {s['sd']:.4f}"


def fmt_gain(g: float | None) -> str:
    return "n/a" if g is None else f"{g:.4f}"


def markdown(summary: dict, figures: list[str] = (), *, paper_figures: list[tuple[str, str]] = (),
             table1: str | None = None, damaged_runs: list[tuple[str, str]] = (), sections: list[str] = ()) -> str:
    """summary.md: the tables of ``summary``, then the figures (``figures`` by name; ``paper_figures`` as
    (name, caption)); ``table1`` the file name of the training table to link, ``damaged_runs`` (member id,
    what is wrong) the training records it skipped; ``sections`` further lines after the gain ranges
    (fu_fast.report.beyond)."""
    m = summary["members"]
    lines = [f"# Frivolous units: {summary['name']}", "",
             f"Members reported: {m['done']} done, {m['pending']} pending"
             + (f" (missing: {', '.join(m['missing'])})" if m["missing"] else "") + ".", ""]
    if table1:
        lines += [f"Training details and accuracy per width (the paper's Table 1): [{table1}]({table1}).", ""]
    if damaged_runs:
        lines += ["Damaged training records (run.json), skipped in the training table: "
                  + "; ".join(f"`{_one_line(member).replace('`', chr(39))}`: {why}" for member, why in damaged_runs)
                  + ".", ""]
    lines += ["Values are means ± sd over trials at each width; " + SD_NOTE + ". "
              "g = 2^b, b the least-squares slope of log2(value) on log2(width) of the trial means "
              "(g > 2: more than doubles when the width doubles; n/a: undefined).", ""]
    for s in summary["series"]:
        head = HEADERS[s["normalized"]]
        lines += [f"## {s['label']}", "", f"Series `{s['series']}`. " + (
            f"Values normalised by the same layer of the series' {s['reference_width']:g}x member, mean over layers."
            if s["normalized"] else
            f"**Not normalised**: the series has no {s['reference_width']:g}x member, so values are unit counts "
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
    if sections:
        lines += [""] + list(sections)
        while lines[-1] == "":
            lines.pop()
    if paper_figures:
        lines += ["", "## The paper's figures", ""]
        for name, caption in paper_figures:
            lines += [f"**{caption}**", "", f"![{name}]({name}.png) ([pdf]({name}.pdf))", ""]
        lines.pop()
    if figures:
        lines += ["", "## Figures", ""] + [f"![{name}]({name}.png) ([pdf]({name}.pdf))" for name in figures]
    return "\n".join(lines) + "\n"


def _table_head(columns: list[str]) -> list[str]:
    return [_row(columns), _row(["---"] * len(columns))]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
