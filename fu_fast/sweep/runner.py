"""Running a sweep: train, analyse and normalise every member; resumable and shardable.

A member is done when its analysis.json exists (written atomically, last) and reads as an
analysis document, so a sweep run again skips finished members, resumes an interrupted
training from its checkpoint, redoes a damaged analysis (with one warning line; the training
is kept), and redoes nothing else. `--shard I/N` runs the members whose training run's index is
I modulo N, so N jobs of an array cover the sweep once (a run, and the members of every epoch it
is analysed at, belong to one job). Normalisation (docs/definitions.md: each layer divided by the
same layer of the series' 4x member, or of its reference_width member: its model's own, or the
sweep's) is applied to every done member of a series as soon as that member of the series is
done, by whichever job gets there.

A sweep with epochs_after trains one run per (series, width, trial) past its epochs setting,
keeping the weights of each epoch analysed (RUN/epoch-N.pt); its members, one per epoch, are
analysed from those files into RUN/epochN/.

Nothing is written before everything is checked: the configuration (on load), that every
member's directory lies inside the sweep directory, that the members already there were made
with this configuration's settings for them, and that the data can be read.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import data as data_lib
from ..analysis import AnalysisResult, analyze
from ..analysis.pca import HISTOGRAM_BINS
from ..atomic import write_atomic
from ..devices import resolve_device
from ..errors import FuFastError
from ..train import load_model, read_run, train
from ..train.checkpoint import epoch_file
from ..train.loop import _check_same_settings as check_same_training
from .config import ANALYSIS_ADDED, Member, SweepConfig, analysis_settings, show

SWEEP_SCHEMA = "fu-fast/sweep/1"
ANALYSIS_FILE, CORRELATIONS_FILE, SWEEP_FILE = "analysis.json", "correlations.json", "sweep.json"


class SweepWarning(UserWarning):
    """Something in the sweep directory is redone: the message is one line that says what and why."""


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str | None) -> "Shard":
        if text is None:
            return cls(0, 1)
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise FuFastError(f"--shard must look like I/N (for example 0/4), got {text!r}") from None
        if not (count >= 1 and 0 <= index < count):
            raise FuFastError(f"--shard {text}: need 0 <= I < N")
        return cls(index, count)

    def __contains__(self, position: int) -> bool:
        return position % self.count == self.index


def run_sweep(config: SweepConfig, out_dir: str | Path, *, shard: Shard = Shard(0, 1), data_dir: str | None = None,
              device: str | None = None, quiet: bool = False,
              on_member: Callable[[Member, str], None] | None = None) -> dict:
    """Train and analyse this shard's members; returns the sweep record (sweep.json)."""
    out_dir = Path(out_dir)
    members = config.members()
    for member in members:
        member_path(out_dir, member)
    damaged = _check_same_sweep(out_dir, config, members, data_dir, device)
    _check_data_and_device(config, members, data_dir, device)
    for member, damage in damaged:
        warnings.warn(f"sweep member {member.dir}: {damage}; it counts as not done, and its analysis is redone "
                      f"(the training is kept)", SweepWarning, stacklevel=2)
    write_sweep(out_dir, config, members)
    runs = {run: i for i, run in enumerate(dict.fromkeys(m.run_dir for m in members))}   # a shard takes whole runs
    for member in members:
        position = runs[member.run_dir]
        if position not in shard or is_done(out_dir, member):
            if on_member is not None:
                on_member(member, "skipped" if position not in shard else "done before")
            continue
        if on_member is not None:
            on_member(member, "start")
        try:
            run_member(config, member, member_path(out_dir, member), data_dir=data_dir, device=device, quiet=quiet)
        except FuFastError as e:
            raise FuFastError(f"sweep member {member.dir}: {e}") from None
        normalize_series(out_dir, members, member.series, config.reference_width_of(member.model))
        if on_member is not None:
            on_member(member, "done")
    for series, model in sorted({(m.series, m.model) for m in members}):
        normalize_series(out_dir, members, series, config.reference_width_of(model))
    return write_sweep(out_dir, config, members)


def run_member(config: SweepConfig, member: Member, member_dir: Path, *, data_dir, device, quiet) -> AnalysisResult:
    """Train the member's run (or resume it, or find it finished) and analyse the member's weights:
    the run's model.pt, or its epoch-N.pt for a member of a sweep with epochs_after."""
    run_dir = member_dir.parent if member.epoch is not None else member_dir   # epochN/ lies in its run
    train(config.train_config(member, data_dir, device), run_dir, quiet=True, silent=quiet)
    if member.epoch is None:
        model, _ = load_model(member_dir)
    else:
        weights = run_dir / epoch_file(member.epoch)
        if not weights.exists():
            raise FuFastError(f"its run {run_dir} has finished without {weights.name}, the weights of epoch "
                              f"{member.epoch}: delete {run_dir} to train it again")
        model, _ = load_model(weights)
    settings = read_run(run_dir)["settings"]
    analysis = dict(config.analyze)
    dataset = data_lib.for_analysis(model.fu_fast_config, trained=settings, split=analysis.pop("split", "test"),
                                    limit=analysis.pop("limit", None))
    result = analyze(model, dataset, device=device, trial=member.trial, **analysis)
    histograms = {name: layer.abs_r_histogram for name, layer in result.layers.items()}
    write_atomic(member_dir / CORRELATIONS_FILE,
                 json.dumps({"bins": HISTOGRAM_BINS, "layers": histograms}) + "\n")
    result.save(member_dir / ANALYSIS_FILE)   # last: its presence marks the member done
    return result


def member_path(out_dir: Path, member: Member) -> Path:
    """The member's directory, checked to lie inside the sweep directory, links followed."""
    return _inside(out_dir, out_dir / member.dir)


def _inside(out_dir: Path, path: Path) -> Path:
    if not path.resolve().is_relative_to(out_dir.resolve()):
        raise FuFastError(f"{path} lies outside the sweep directory {out_dir} (through a link?): nothing is "
                          f"written there")
    return path


def read_analysis(path: Path) -> AnalysisResult | None:
    """A member's analysis document, None while there is none; FuFastError naming the file when
    it cannot be used: AnalysisResult.load's reasons, or a value no result holds (NaN)."""
    if not path.exists():
        return None
    result = AnalysisResult.load(path)
    try:
        result.to_dict()
    except (ValueError, TypeError) as e:
        raise FuFastError(f"{path} is not a fu-fast analysis document: {e}") from None
    return result


def done_analysis(out_dir: Path, member: Member) -> AnalysisResult | None:
    """The member's analysis; None while it has none, or a damaged one (which is redone)."""
    try:
        return read_analysis(out_dir / member.dir / ANALYSIS_FILE)
    except FuFastError:
        return None


def is_done(out_dir: Path, member: Member) -> bool:
    return done_analysis(out_dir, member) is not None


def normalize_series(out_dir: Path, members: list[Member], series: str, reference_width: float) -> None:
    """Divide every done member of ``series`` by its member of ``reference_width`` (the paper's 4x;
    docs/definitions.md), once that one is done."""
    done = [(m, done_analysis(out_dir, m)) for m in members if m.series == series]
    done = [(m, result) for m, result in done if result is not None]
    reference = next((result for m, result in done if math.isclose(m.width, reference_width)), None)
    if reference is None:
        return
    for member, result in done:
        if all(layer.reference_units is not None for layer in result.layers.values()):
            continue
        result.normalize(reference).save(out_dir / member.dir / ANALYSIS_FILE)


def write_sweep(out_dir: Path, config: SweepConfig, members: list[Member]) -> dict:
    """sweep.json: the configuration, and per member its status and the analysis settings it
    was (or will be) analysed with, which a later run compares with its own."""
    analysis = config.analysis_settings()
    record = {"schema": SWEEP_SCHEMA, "name": config.name, "config": config.source,
              "members": [{**m.record("done" if is_done(out_dir, m) else "pending"), "analysis": analysis}
                          for m in members]}
    write_atomic(out_dir / SWEEP_FILE, json.dumps(record, indent=1) + "\n")
    return record


def _check_same_sweep(out_dir: Path, config: SweepConfig, members: list[Member], data_dir, device) -> list:
    """Refuse to mix other settings into this sweep; returns (member, why) for damaged analyses.

    The sweep directory holds a different sweep when a member of this configuration is there
    already with other settings of its own (trained with other training settings, or analysed
    with other analysis settings: a series would mix them), or when a done member of the
    recorded sweep is not in this configuration (sweep.json would lose finished work). Any
    other change reuses what is there: a corrected or extended configuration (another width,
    trial, variant or name) keeps every member whose own settings did not change.
    """
    record = _read_record(out_dir)
    recorded = {entry["id"]: entry for entry in (record or {}).get("members", [])}
    settings = config.analysis_settings()
    damaged = []
    for member in members:
        folder = out_dir / member.dir
        run = read_run(out_dir / member.run_dir)
        if run is not None:
            try:
                check_same_training(out_dir / member.run_dir, run["settings"],
                                    config.train_config(member, data_dir, device).resolve())
            except FuFastError as e:
                raise FuFastError(f"sweep member {member.dir}: {e}") from None
        try:
            if read_analysis(folder / ANALYSIS_FILE) is None:
                continue
        except FuFastError as e:
            damaged.append((member, str(e)))
            continue
        before = _recorded_analysis(record, recorded.get(member.dir))
        if before is not None:   # a setting added since the record was written: the default it ran with
            before = {**ANALYSIS_ADDED, **before}
        if before is None:
            raise FuFastError(f"{out_dir} holds member {member.dir} analysed, but no {SWEEP_FILE} record of how: "
                              f"use another --out, or delete {folder / ANALYSIS_FILE} to analyse it again")
        if before != settings:
            key = next(k for k in sorted(set(before) | set(settings)) if before.get(k) != settings.get(k))
            raise FuFastError(f"{out_dir} holds a different sweep: member {member.dir} was analysed with "
                              f"{key}={show(before.get(key))}, not {show(settings.get(key))}; use another --out, or "
                              f"delete {folder / ANALYSIS_FILE} to analyse it again")
    ids = {m.dir for m in members}
    for entry in recorded.values():
        if entry["id"] in ids:
            continue
        folder = _inside(out_dir, out_dir / entry["dir"])
        if (folder / ANALYSIS_FILE).exists():
            raise FuFastError(f"{out_dir} holds a different sweep ({record.get('name')!r}): its done member "
                              f"{entry['id']} is not in this configuration; use another --out, or delete {folder} "
                              f"to drop it")
    return damaged


def _read_record(out_dir: Path) -> dict | None:
    """The recorded sweep.json, its member list checked; None when there is none."""
    path = out_dir / SWEEP_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        raise FuFastError(f"{path} is not a readable sweep record") from None
    if not isinstance(record, dict) or record.get("schema") != SWEEP_SCHEMA:
        raise FuFastError(f"{path} is not a fu-fast sweep record")
    entries = record.get("members")
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("id"), str) and isinstance(e.get("dir"), str) for e in entries):
        raise FuFastError(f"{path} has a malformed member list (each member needs an id and a dir)")
    return record


def _recorded_analysis(record: dict | None, entry: dict | None) -> dict | None:
    """How a done member was analysed, by the recorded sweep.json; None when it does not say.
    Records written before members carried their settings give the sweep's [analyze] table."""
    if entry is not None and "analysis" in entry:
        return entry["analysis"] if isinstance(entry["analysis"], dict) else {}
    if entry is None or not isinstance(record.get("config"), dict):
        return None
    try:
        return analysis_settings(dict(record["config"].get("analyze", {})))
    except (FuFastError, TypeError, ValueError):   # a table the rules of today refuse: not these settings
        return {}


def _check_data_and_device(config: SweepConfig, members: list[Member], data_dir, device) -> None:
    """Fail before training anything when a member's data set cannot be read or its device is not here."""
    for target in {config.train_config(m, data_dir, device).device for m in members} - {None}:
        resolve_device(target)
    seen = set()
    for member in members:
        train_config = config.train_config(member, data_dir, None).resolve()
        key = (train_config.data, train_config.data_dir)
        if key not in seen:
            seen.add(key)
            data_lib.load(train_config.data, "test", data_dir=train_config.data_dir,
                          input_dim=train_config.input_dim or 10)
