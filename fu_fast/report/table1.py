"""The paper's Table 1 for a sweep: training details and accuracy per series and width (table1.md).

Every value comes from the members' run.json records (the resolved settings each network was trained
with, docs/sweep-format.md), never from the configuration: what is listed is what ran. Per series and
width: the model, its parameters, the optimiser, learning rate and schedule, batch size, the epochs
trained (and early stopping), weight decay, augmentation, dropout and random labels where any row sets
them, and the train and test accuracy of the analysed epoch as mean ± sd over the trained trials.

Members without a finished training record are listed, never silently left out: pending (no run.json
yet), training (a run still in progress), or skipped (a damaged run.json, with what is wrong with it).
"""

from __future__ import annotations

from .tables import (SD_NOTE, MemberEntry, Sweep, _row, _table_head, analysed_epoch, fmt_stats, group_by_width,
                     series_labels, stats)

TABLE1_FILE = "table1.md"
MISSING = "n/a"


def table1_markdown(sweep: Sweep) -> str:
    """table1.md for ``sweep``: one table per series (a row per width), then the members left out."""
    groups: dict[str, list[MemberEntry]] = {}
    for entry in sweep.entries:
        groups.setdefault(entry.series, []).append(entry)
    labels = series_labels({s: (entries[0].model, entries[0].variant) for s, entries in groups.items()})
    lines = [f"# Table 1: training details and accuracy per width ({_text(sweep.name)})", "",
             "After the paper's Table 1, from each member's run.json: the settings it was trained with "
             "(resolved: learning rate and batch size include the factor k). Accuracies are those of the epoch "
             "whose weights were analysed (the best validation epoch, else the last), mean ± sd over the trained "
             f"trials; {SD_NOTE}. Back to the [summary](summary.md).", ""]
    left_out = []
    for series, entries in groups.items():
        lines += [f"## {_text(labels[series])}", "", f"Series `{_code(series)}`.", ""]
        rows = [_row_cells(width, members) for width, members in group_by_width(entries).items()]
        columns = [c for c in COLUMNS if c not in OPTIONAL or any(r[c] != "—" for r in rows)]
        lines += _table_head(columns)
        lines += [_row([r[c] for c in columns]) for r in rows]   # cells made safe where made (_text, _distinct)
        lines.append("")
        left_out += [_left_out_line(sweep, e) for e in entries if _state(e) != "trained"]
    lines += ["## Members not in the table", ""]
    lines += left_out or ["None: every member's training record is in the table."]
    return "\n".join(lines) + "\n"


COLUMNS = ("width", "trials", "model", "parameters", "optimizer", "lr", "schedule", "batch size", "k",
           "epochs trained", "early stopping", "weight decay", "augment", "dropout", "random labels",
           "train accuracy", "test accuracy")
OPTIONAL = ("k", "weight decay", "augment", "dropout", "random labels")   # shown where a row sets them


def _state(entry: MemberEntry) -> str:
    if entry.run_problem is not None:
        return "skipped"
    if entry.run is None:
        return "without record" if entry.status == "done" else "pending"
    return "training" if entry.run.get("status") == "running" else "trained"


def _row_cells(width: float, members: list[MemberEntry]) -> dict[str, str]:
    trained = [m for m in members if _state(m) == "trained"]
    runs = [m.run for m in trained]
    settings = [r.get("settings", {}) for r in runs]
    options = [s.get("model_options", {}) for s in settings]
    counts = {}
    for m in members:
        counts[_state(m)] = counts.get(_state(m), 0) + 1
    trials = f"{len(trained)} of {len(members)}" + (
        " (" + ", ".join(f"{n} {state}" for state, n in counts.items() if state != "trained") + ")"
        if len(trained) < len(members) else "")
    epochs = [analysed_epoch(r) for r in runs]
    cells = {
        "width": f"{width:g}", "trials": trials,
        "model": _distinct([m.model for m in members]),
        "parameters": _distinct([r.get("model", {}).get("parameters") for r in runs]),
        "optimizer": _distinct([_optimizer(s) for s in settings]),
        "lr": _distinct([s.get("lr") for s in settings]),
        "schedule": _distinct([s.get("schedule") for s in settings]),
        "batch size": _distinct([s.get("batch_size") for s in settings]),
        "k": _set_only([s.get("k") for s in settings], lambda k: k != 1),
        "epochs trained": _epochs_trained(runs),
        "early stopping": _early_stopping(runs),
        "weight decay": _set_only([s.get("weight_decay") for s in settings], lambda wd: wd > 0),
        "augment": _set_only([s.get("augment") for s in settings], bool),
        "dropout": _set_only([o.get("dropout") for o in options], lambda p: p > 0),
        "random labels": _set_only([s.get("random_labels") for s in settings], bool),
        "train accuracy": _accuracy([e.get("train_accuracy") for e in epochs]),
        "test accuracy": _accuracy([e.get("test_accuracy") for e in epochs]),
    }
    if not trained:   # nothing trained at this width yet: the row says so (n/a: records skipped or missing)
        waiting = all(_state(m) in ("pending", "training") for m in members)
        cells.update({c: "pending" if waiting else MISSING
                      for c in ("parameters", "optimizer", "lr", "schedule", "batch size", "epochs trained",
                                "early stopping", "train accuracy", "test accuracy")})
    return cells


def _optimizer(settings: dict) -> str | None:
    name = settings.get("optimizer")
    if name in ("sgd_momentum", "rmsprop") and settings.get("momentum") is not None:
        return f"{name} (momentum {settings['momentum']:g})"
    return name


def _epochs_trained(runs: list[dict]) -> str:
    trained = [len(r.get("epochs", [])) for r in runs]
    if not trained:
        return MISSING
    most = sorted({r["settings"]["epochs"] for r in runs if "epochs" in r.get("settings", {})})
    span = f"{min(trained)}" if min(trained) == max(trained) else f"{min(trained)}–{max(trained)}"
    return span + (f" of {'/'.join(str(m) for m in most)}" if most else "")


def _early_stopping(runs: list[dict]) -> str:
    if not any("patience" in r.get("settings", {}) for r in runs):
        return MISSING
    if {r["settings"].get("patience") for r in runs} == {None}:
        return "no"
    stopped = sum(bool(r.get("stopped_early")) for r in runs)
    patience = _distinct([r.get("settings", {}).get("patience") for r in runs])
    return f"patience {patience}: stopped early in {stopped} of {len(runs)}"


def _accuracy(values: list) -> str:
    return fmt_stats(stats(values)) if any(v is not None for v in values) else MISSING


def _set_only(values: list, is_set) -> str:
    """The values where any trial sets them (``is_set``), else "—" (the column is left out if no row sets it)."""
    if not any(v is not None and is_set(v) for v in values):
        return "—"
    return _distinct(values)


def _distinct(values: list) -> str:
    """One value, or the distinct values of the trials joined by " / " (they should agree); n/a if none."""
    shown = []
    for v in values:
        text = MISSING if v is None else (str(v).lower() if isinstance(v, bool) else
                                          f"{v:g}" if isinstance(v, float) else str(v))
        text = _text(text)
        if text not in shown:
            shown.append(text)
    return " / ".join(shown) if shown else MISSING


def _left_out_line(sweep: Sweep, entry: MemberEntry) -> str:
    state = _state(entry)
    where = f"`{_code(entry.id)}`"
    if state == "skipped":
        record = (entry.folder / "run.json").relative_to(sweep.path)
        return f"- {where}: skipped, its training record `{_code(str(record))}` is damaged: {_text(entry.run_problem)}"
    if state == "training":
        epochs = entry.run.get("epochs", [])
        most = entry.run.get("settings", {}).get("epochs")
        return f"- {where}: training, {len(epochs)} epoch(s) done" + (f" of {most}" if most is not None else "")
    if state == "without record":
        return f"- {where}: analysed, but it has no training record (run.json)"
    return f"- {where}: pending (not trained yet)"


def _text(value) -> str:
    """Untrusted text as one markdown table cell or line: one line, no cell separators."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _code(value) -> str:
    return _text(value).replace("`", "'")
