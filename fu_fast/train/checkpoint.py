"""A run directory and the files in it, all written atomically.

    RUN_DIR/run.json        settings (resolved), model and data records, per-epoch metrics, status
    RUN_DIR/checkpoint.pt   the latest epoch: weights, optimiser, schedule, early-stopping state
    RUN_DIR/model.pt        the weights to analyse (best validation epoch, or the last) and the
                            model's build record, so `fu-fast analyze --checkpoint RUN_DIR`
                            rebuilds the model without being told what it is; it appears
                            when the run ends (best.pt holds it until then)
    RUN_DIR/epoch-N.pt      with save_every / save_epochs: the weights at the end of epoch N, in
                            model.pt's format (`fu-fast analyze --checkpoint RUN_DIR/epoch-N.pt`)

Every file read here may come from elsewhere: torch files are loaded weights-only (tensors
and plain containers, never code), and every record is checked before use, so a damaged,
foreign or hand-edited file is one FuFastError line naming the file and what is wrong.
"""

from __future__ import annotations

import json
import numbers
import os
import pickle
import re
import warnings
from pathlib import Path

import torch

from .. import models
from ..atomic import atomic_file, write_atomic
from ..errors import FuFastError

RUN_SCHEMA = "fu-fast/run/1"
MODEL_SCHEMA = "fu-fast/model/1"
RUN_FILE, CHECKPOINT_FILE, MODEL_FILE = "run.json", "checkpoint.pt", "model.pt"
BEST_FILE = "best.pt"   # the best weights so far; renamed to model.pt when the run ends


def epoch_file(epoch: int) -> str:
    """The name of the checkpoint of the weights at the end of ``epoch`` (save_every, save_epochs)."""
    return f"epoch-{epoch}.pt"


def save_torch(obj, path: Path) -> None:
    with atomic_file(path) as f:
        torch.save(obj, f)


ZIP_MAGIC = b"PK\x03\x04"   # torch.save writes a zip archive


def load_torch(path: Path, what: str = "checkpoint"):
    """What torch.save wrote at ``path`` (``what``: how messages name the file), loaded
    weights-only; FuFastError with one line for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except OSError as e:
        raise FuFastError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if not head:
        raise FuFastError(f"cannot read {what} {path}: it is empty (0 bytes), not a PyTorch checkpoint")
    try:
        with warnings.catch_warnings():
            # A plain pickle (not torch.save's) draws a protocol warning before the error: one line only.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FuFastError(f"cannot read {what} {path}: {_unreadable(e, head == ZIP_MAGIC)}") from None


def _unreadable(error: Exception, zip_archive: bool) -> str:
    """Why torch.load failed, in words. torch's own message is never passed on whole: for a
    refused object it advises re-running with weights_only=False, which would run whatever
    code the file holds."""
    refusal = isinstance(error, pickle.UnpicklingError)   # how torch.load reports a weights-only refusal
    refused = re.search(r"GLOBAL ([\w.]+)", str(error)) if refusal else None
    if refused:
        return (f"it holds objects a safe (weights-only) load refuses ({refused.group(1)}); fu-fast reads only "
                f"tensors and plain containers: save a state_dict, not a model or other object")
    if not zip_archive:
        return "not a PyTorch checkpoint (the zip archive torch.save writes)"
    if refusal:
        return "it is damaged: its pickled record cannot be read"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = lines[0].split(". ")[0] if lines else type(error).__name__
    return f"it is truncated or damaged ({detail})"


def _config_problem(config) -> str | None:
    """What is wrong with a model build record {"name", "width", "options"}, or None."""
    if not isinstance(config, dict):
        return f"is a {type(config).__name__}, not a dict"
    for key, kind, what in (("name", str, "a string"), ("width", numbers.Real, "a number"),
                            ("options", dict, "a dict")):
        if key not in config:
            return f"lacks {key!r}"
        if not isinstance(config[key], kind) or isinstance(config[key], bool):
            return f"has {key}={config[key]!r}, not {what}"
    return None


def _weights_problem(state_dict) -> str | None:
    if not isinstance(state_dict, dict):
        return f"is a {type(state_dict).__name__}, not a dict of tensors"
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            return f"holds {key!r}: {type(value).__name__}, not a tensor"
    return None


def _check_record(path: Path, saved: dict, kind: str, config_key: str, weights_key: str) -> None:
    """Raise FuFastError unless ``saved`` holds a usable build record and weights."""
    for key, problem in ((config_key, _config_problem), (weights_key, _weights_problem)):
        if key not in saved:
            raise FuFastError(f"checkpoint {path} is not a usable {kind}: it lacks {key!r}")
        what = problem(saved[key])
        if what is not None:
            raise FuFastError(f"checkpoint {path} is not a usable {kind}: its {key!r} record {what}")


# The training loop's state in checkpoint.pt (fu_fast.train.loop), with the types it needs.
LOOP_STATE = {"epoch": int, "best_val": numbers.Real, "best_epoch": int, "since_best": int, "history": list,
              "stopped_early": bool, "done": bool}


def restore(path: Path, model: torch.nn.Module, optimizer, scheduler) -> dict:
    """Load a run's checkpoint.pt into ``model``, ``optimizer`` and ``scheduler``; returns the
    loop state. Anything unusable is one FuFastError line, which says how to start over."""
    try:
        return _restore(path, model, optimizer, scheduler)
    except FuFastError as e:
        raise FuFastError(f"{e}; delete it to restart the run from its first epoch") from None


def _restore(path: Path, model: torch.nn.Module, optimizer, scheduler) -> dict:
    saved = load_torch(path)
    wrong = f"checkpoint {path} is not a usable training checkpoint"
    if not isinstance(saved, dict):
        raise FuFastError(f"{wrong}: it holds a {type(saved).__name__}")
    for key in ("optimizer", "scheduler", "state"):
        if key not in saved:
            raise FuFastError(f"{wrong}: it lacks {key!r}")
        if not isinstance(saved[key], dict):
            raise FuFastError(f"{wrong}: its {key!r} is a {type(saved[key]).__name__}, not a dict")
    _check_record(path, saved, "training checkpoint", "model_config", "model")
    state = saved["state"]
    for key, kind in LOOP_STATE.items():
        if key not in state:
            raise FuFastError(f"{wrong}: its loop state lacks {key!r}")
        if not isinstance(state[key], kind) or (kind is not bool and isinstance(state[key], bool)):
            raise FuFastError(f"{wrong}: its loop state has {key}={state[key]!r}")
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        # load_state_dict says "Error(s) in loading state_dict for X:" and the problems below it.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        raise FuFastError(f"checkpoint {path} does not fit this run's model and optimiser "
                          f"({lines[min(1, len(lines) - 1)][:200]})") from None
    return state


def write_run(run_dir: Path, record: dict) -> None:
    write_atomic(run_dir / RUN_FILE, json.dumps(record, indent=1) + "\n")


# Keys of run.json that its readers use, with their types (None: may be null).
RUN_KEYS = {"status": (str,), "settings": (dict,), "epochs": (list,), "best_epoch": (int, type(None)),
            "stopped_early": (bool,)}
SETTINGS_KEYS = {"data": (str, type(None)), "data_dir": (str, type(None)), "random_labels": (bool,),
                 "data_seed": (int,)}


def read_run(run_dir: Path) -> dict | None:
    """The run record in ``run_dir`` (None if there is none), checked: FuFastError naming the
    file and the key for a record its readers could not use."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FuFastError(f"cannot read {path}: {e}") from None
    if not isinstance(record, dict):
        raise FuFastError(f"{path} is not a fu-fast run record (it holds a {type(record).__name__}, not an object)")
    if record.get("schema") != RUN_SCHEMA:
        raise FuFastError(f"{path} is not a fu-fast run record (schema {record.get('schema')!r})")
    _check_keys(path, record, RUN_KEYS, "")
    _check_keys(path, record["settings"], SETTINGS_KEYS, "settings.", optional=True)
    if record["status"] not in ("running", "finished"):
        raise FuFastError(f"{path}: status {record['status']!r} is neither 'running' nor 'finished'")
    for i, epoch in enumerate(record["epochs"]):
        if not isinstance(epoch, dict) or not all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) for k, v in epoch.items()
                if k.endswith("_accuracy")):
            raise FuFastError(f"{path}: epochs[{i}] is not an object of numbers")
    return record


def _check_keys(path: Path, record: dict, types: dict, prefix: str, optional: bool = False) -> None:
    for key, kinds in types.items():
        if key not in record:
            if optional:
                continue
            raise FuFastError(f"{path} is not a complete fu-fast run record: it lacks {prefix}{key!r}")
        value = record[key]
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            raise FuFastError(f"{path}: {prefix}{key} is {value!r}, not "
                              f"{' or '.join('null' if k is type(None) else k.__name__ for k in kinds)}")


def model_file_record(model: torch.nn.Module, extra: dict) -> dict:
    return {"schema": MODEL_SCHEMA, "model": model.fu_fast_config, "state_dict": model.state_dict(), **extra}


def load_model(path: str | os.PathLike, *, model: str | None = None, width: float | None = None,
               options: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """The model saved at ``path`` (a run directory or a .pt file) and its record.

    A run directory or a fu-fast model/checkpoint file names its own model; ``model``,
    ``width`` and ``options``, when given, must agree with it. A plain state_dict file needs
    ``model`` (and ``width``) to know what to build. Any disagreement, a missing file or
    weights that do not fit the model raise FuFastError with one line.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / MODEL_FILE).exists():
            state = "unfinished (resume it with fu-fast train --out " + str(path) + ")" \
                if (path / CHECKPOINT_FILE).exists() else "not a fu-fast run directory"
            raise FuFastError(f"no {MODEL_FILE} in {path}: the run is {state}")
        path = path / MODEL_FILE
    elif not path.exists():
        raise FuFastError(f"checkpoint {path} does not exist")
    saved = load_torch(path)
    own_record = True   # the file names its model (not the caller's model and width)
    if isinstance(saved, dict) and saved.get("schema") == MODEL_SCHEMA:
        _check_record(path, saved, "fu-fast model file", "model", "state_dict")
        config, state_dict, record = saved["model"], saved["state_dict"], {k: v for k, v in saved.items()
                                                                           if k not in ("state_dict",)}
    elif isinstance(saved, dict) and "model_config" in saved and "model" in saved:   # checkpoint.pt
        _check_record(path, saved, "training checkpoint", "model_config", "model")
        config, state_dict, record = saved["model_config"], saved["model"], {"model": saved["model_config"]}
    elif isinstance(saved, dict) and all(isinstance(v, torch.Tensor) for v in saved.values()):
        if model is None:
            raise FuFastError(f"{path} holds bare weights: say which model they are (--model, --width)")
        config = {"name": model, "width": 1.0 if width is None else width, "options": dict(options or {})}
        state_dict, record, own_record = saved, {"model": config}, False
    else:
        raise FuFastError(f"{path} is not a fu-fast checkpoint or a state_dict")
    _check_agrees(path, config, model, width, options)
    try:
        net = models.build(config["name"], config["width"], **config["options"])
    except FuFastError as e:
        if not own_record:
            raise
        raise FuFastError(f"checkpoint {path} holds a model record that cannot be built: {e}") from None
    try:
        net.load_state_dict(state_dict)
    except RuntimeError as e:
        problem = " ".join(line.strip() for line in str(e).splitlines()[1:3]) or str(e)
        raise FuFastError(f"checkpoint {path} does not match {config['name']} at width {config['width']}: "
                          f"{problem[:300]}") from None
    return net, record


def _check_agrees(path: Path, config: dict, model, width, options) -> None:
    if model is not None and model != config["name"]:
        raise FuFastError(f"checkpoint {path} holds model {config['name']!r}, not {model!r}")
    if width is not None and float(width) != float(config["width"]):
        raise FuFastError(f"checkpoint {path} holds {config['name']} at width {config['width']}, not {width}")
    for key, value in (options or {}).items():
        if key in config["options"] and config["options"][key] != value:
            raise FuFastError(f"checkpoint {path} was built with {key}={config['options'][key]!r}, not {value!r}")
