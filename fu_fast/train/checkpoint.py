"""A run directory and the files in it, all written atomically.

    RUN_DIR/run.json        settings (resolved), model and data records, per-epoch metrics, status
    RUN_DIR/checkpoint.pt   the latest epoch: weights, optimiser, schedule, early-stopping state
    RUN_DIR/model.pt        the weights to analyse (best validation epoch, or the last) and the
                            model's build record, so `fu-fast analyze --checkpoint RUN_DIR`
                            rebuilds the model without being told what it is; it appears
                            when the run ends (best.pt holds it until then)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .. import models
from ..atomic import atomic_file, write_atomic
from ..errors import FuFastError

RUN_SCHEMA = "fu-fast/run/1"
MODEL_SCHEMA = "fu-fast/model/1"
RUN_FILE, CHECKPOINT_FILE, MODEL_FILE = "run.json", "checkpoint.pt", "model.pt"
BEST_FILE = "best.pt"   # the best weights so far; renamed to model.pt when the run ends


def save_torch(obj, path: Path) -> None:
    with atomic_file(path) as f:
        torch.save(obj, f)


def load_torch(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, in one line
        raise FuFastError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None


def write_run(run_dir: Path, record: dict) -> None:
    write_atomic(run_dir / RUN_FILE, json.dumps(record, indent=1) + "\n")


def read_run(run_dir: Path) -> dict | None:
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FuFastError(f"cannot read {path}: {e}") from None
    if record.get("schema") != RUN_SCHEMA:
        raise FuFastError(f"{path} is not a fu-fast run record (schema {record.get('schema')!r})")
    return record


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
    if isinstance(saved, dict) and saved.get("schema") == MODEL_SCHEMA:
        config, state_dict, record = saved["model"], saved["state_dict"], {k: v for k, v in saved.items()
                                                                           if k not in ("state_dict",)}
    elif isinstance(saved, dict) and "model_config" in saved and "model" in saved:   # checkpoint.pt
        config, state_dict, record = saved["model_config"], saved["model"], {"model": saved["model_config"]}
    elif isinstance(saved, dict) and all(isinstance(v, torch.Tensor) for v in saved.values()):
        if model is None:
            raise FuFastError(f"{path} holds bare weights: say which model they are (--model, --width)")
        config = {"name": model, "width": 1.0 if width is None else width, "options": dict(options or {})}
        state_dict, record = saved, {"model": config}
    else:
        raise FuFastError(f"{path} is not a fu-fast checkpoint or a state_dict")
    _check_agrees(path, config, model, width, options)
    net = models.build(config["name"], config["width"], **config["options"])
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
