"""Running a sweep: train, analyse and normalise every member; resumable and shardable.

A member is done when its analysis.json exists (written atomically, last), so a sweep run
again skips finished members, resumes an interrupted training from its checkpoint, and
redoes nothing else. `--shard I/N` runs the members whose index is I modulo N, so N jobs of
an array cover the sweep once. Normalisation (SPEC section 2: each layer divided by the
same layer of the series' 4x member) is applied to every done member of a series as soon
as the 4x member of that series is done, by whichever job gets there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import data as data_lib
from ..analysis import AnalysisResult, analyze
from ..analysis.pca import HISTOGRAM_BINS
from ..atomic import write_atomic
from ..errors import FuFastError
from ..train import load_model, read_run, train
from .config import Member, SweepConfig

SWEEP_SCHEMA = "fu-fast/sweep/1"
ANALYSIS_FILE, CORRELATIONS_FILE, SWEEP_FILE = "analysis.json", "correlations.json", "sweep.json"
REFERENCE_WIDTH = 4.0


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
    _check_same_sweep(out_dir, config)
    _check_data(config, members, data_dir)
    write_sweep(out_dir, config, members)
    for position, member in enumerate(members):
        if position not in shard or is_done(out_dir, member):
            if on_member is not None:
                on_member(member, "skipped" if position not in shard else "done before")
            continue
        if on_member is not None:
            on_member(member, "start")
        try:
            run_member(config, member, out_dir / member.dir, data_dir=data_dir, device=device, quiet=quiet)
        except FuFastError as e:
            raise FuFastError(f"sweep member {member.id}: {e}") from None
        normalize_series(out_dir, members, member.series)
        if on_member is not None:
            on_member(member, "done")
    for series in sorted({m.series for m in members}):
        normalize_series(out_dir, members, series)
    return write_sweep(out_dir, config, members)


def run_member(config: SweepConfig, member: Member, member_dir: Path, *, data_dir, device, quiet) -> AnalysisResult:
    train(config.train_config(member, data_dir, device), member_dir, quiet=True, silent=quiet)
    model, _ = load_model(member_dir)
    settings = read_run(member_dir)["settings"]
    analysis = dict(config.analyze)
    dataset = data_lib.for_analysis(model.fu_fast_config, trained=settings, split=analysis.pop("split", "test"),
                                    limit=analysis.pop("limit", None))
    result = analyze(model, dataset, device=device, trial=member.trial, **analysis)
    histograms = {name: layer.abs_r_histogram for name, layer in result.layers.items()}
    write_atomic(member_dir / CORRELATIONS_FILE,
                 json.dumps({"bins": HISTOGRAM_BINS, "layers": histograms}) + "\n")
    result.save(member_dir / ANALYSIS_FILE)   # last: its presence marks the member done
    return result


def is_done(out_dir: Path, member: Member) -> bool:
    return (out_dir / member.dir / ANALYSIS_FILE).exists()


def normalize_series(out_dir: Path, members: list[Member], series: str) -> None:
    """Divide every done member of ``series`` by its 4x member (SPEC section 2), once known."""
    own = [m for m in members if m.series == series and is_done(out_dir, m)]
    references = [m for m in own if m.width == REFERENCE_WIDTH]
    if not references:
        return
    reference = AnalysisResult.load(out_dir / references[0].dir / ANALYSIS_FILE)
    for member in own:
        path = out_dir / member.dir / ANALYSIS_FILE
        result = AnalysisResult.load(path)
        if all(layer.reference_units is not None for layer in result.layers.values()):
            continue
        result.normalize(reference).save(path)


def write_sweep(out_dir: Path, config: SweepConfig, members: list[Member]) -> dict:
    record = {"schema": SWEEP_SCHEMA, "name": config.name, "config": config.source,
              "members": [m.record("done" if is_done(out_dir, m) else "pending") for m in members]}
    write_atomic(out_dir / SWEEP_FILE, json.dumps(record, indent=1) + "\n")
    return record


def _check_same_sweep(out_dir: Path, config: SweepConfig) -> None:
    path = out_dir / SWEEP_FILE
    if not path.exists():
        return
    try:
        recorded = json.loads(path.read_text())
    except ValueError:
        raise FuFastError(f"{path} is not a readable sweep record") from None
    if recorded.get("schema") != SWEEP_SCHEMA:
        raise FuFastError(f"{path} is not a fu-fast sweep record")
    if recorded.get("config") != json.loads(json.dumps(config.source)):
        raise FuFastError(f"{out_dir} holds a different sweep ({recorded.get('name')!r}): use another --out")


def _check_data(config: SweepConfig, members: list[Member], data_dir) -> None:
    """Fail before training anything when a member's data set cannot be read."""
    seen = set()
    for member in members:
        train_config = config.train_config(member, data_dir, None).resolve()
        key = (train_config.data, train_config.data_dir)
        if key not in seen:
            seen.add(key)
            data_lib.load(train_config.data, "test", data_dir=train_config.data_dir,
                          input_dim=train_config.input_dim or 10)
