"""A thinner zoo model as a run directory that `fu-fast analyze --checkpoint` reads.

    OUT_DIR/compress.json   the report (fu_fast.compress.engine)
    OUT_DIR/run.json        a run record: the wide run's data settings, so the analysis uses the
                            same data, and where the model came from; no training epochs
    OUT_DIR/model.pt        the thin model's build record and weights (written last: its presence
                            means the directory is complete)

The build record must rebuild the thin model through the registry (fu_fast.train.checkpoint
.load_model). An MLP's single hidden layer of k units is exactly the MLP at width k/128 (k/128
is exact in binary, and round(128 * k/128) = k). AlexNet's four layers shrink independently,
which no width gives: its record keeps the wide width and sets the build option ``units`` to
the thin sizes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import models
from ..atomic import write_atomic
from ..errors import FuFastError
from ..train import checkpoint as ckpt
from .engine import CompressResult

REPORT_FILE = "compress.json"


def thin_config(wide_config: dict, thin: nn.Module) -> dict:
    """The registry build record of the thin model (AlexNet: its layer sizes in the option units)."""
    name = wide_config.get("name")
    thin_record = models.entry(name).thin_record if name in models.names() else None
    if thin_record is None:
        compressible = ", ".join(n for n in models.names() if models.entry(n).thin_record is not None)
        raise FuFastError(f"cannot save a compressed {name!r} as a zoo checkpoint; the zoo's sequential "
                          f"models are {compressible}")
    config = thin_record(wide_config, thin)
    # Shapes only (meta tensors): the record must rebuild exactly this model.
    state = thin.state_dict()
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "copying a non-meta tensor to a meta one is a no-op": intended
        rebuilt = models.build(config["name"], config["width"], **config["options"])
        try:
            rebuilt.load_state_dict({k: v.to("meta") for k, v in state.items()})
        except RuntimeError as e:   # a bug here, not a user error: say what did not fit
            raise FuFastError(f"the thin model does not rebuild from {config}: {str(e).splitlines()[-1]}") from None
    return config


def save(result: CompressResult, out_dir: str | Path, *, source: str | None = None,
         source_run: dict | None = None) -> Path:
    """Write the run directory of a compressed zoo model; returns it."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FuFastError(f"--out {out_dir} exists and is not a directory")
    if (out_dir / ckpt.MODEL_FILE).exists() and not (out_dir / REPORT_FILE).exists():
        raise FuFastError(f"{out_dir} holds a trained model ({ckpt.MODEL_FILE}) that is not a compress output; "
                          "choose another --out")
    thin = result.model
    config = thin_config(result.report["model"], thin)
    thin.fu_fast_config = config
    summary = {key: result.report[key] for key in ("parameters", "units", "agreement", "accuracy", "settings")}
    run = {
        "schema": ckpt.RUN_SCHEMA, "status": "finished",
        "settings": dict((source_run or {}).get("settings") or {}),
        "model": {**config, "parameters": models.parameter_count(thin)},
        "data": (source_run or {}).get("data"),
        "compressed_from": source, "compress": summary,
        "epochs": [], "best_epoch": None, "stopped_early": False,
    }
    record = {**result.report, "source": source, "thin_model": config}
    write_atomic(out_dir / REPORT_FILE, json.dumps(record, indent=1) + "\n")
    ckpt.write_run(out_dir, run)
    ckpt.save_torch(ckpt.model_file_record(thin, {"compressed_from": source, "compress": summary}),
                    out_dir / ckpt.MODEL_FILE)
    return out_dir
