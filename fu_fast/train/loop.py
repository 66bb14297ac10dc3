"""The training loop: epochs, evaluation, early stopping, checkpoints, resumption.

Reproducibility: every epoch reseeds from (seed, epoch): the shuffling order, dropout and
augmentation draw from that seed, and nothing else carries random state across epochs. So a
run resumed from its last checkpoint ends with the same weights as an uninterrupted one
(bit for bit on the CPU; GPU kernels may be non-deterministic).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .. import data as data_lib
from .. import models
from ..errors import FuFastError
from . import checkpoint as ckpt
from .config import TrainConfig
from .distributed import Distributed, setup, teardown
from .optim import build_optimizer, build_scheduler
from .progress import Progress

# Settings that change how fast a run goes but not what it computes: a run may resume with
# different values of these.
_RUNTIME_ONLY = ("device", "workers", "compile", "data_dir", "evaluate_test")


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch)."""
    return (seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63)


def train(config: TrainConfig, out_dir: str | Path, *, quiet: bool = False, silent: bool = False,
          on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train (or resume, or find finished) the run in ``out_dir``; returns its run record.

    The run directory gets run.json, checkpoint.pt (every epoch), model.pt and, with
    save_every or save_epochs, epoch-N.pt (see fu_fast.train.checkpoint). A finished run with
    the same settings is returned as it is; an unfinished one resumes from its last
    checkpoint; one with different settings is an error. Under torchrun each process trains on
    its shard of every global batch.
    Progress: bars, one line per epoch when ``quiet``, nothing when ``silent``.
    """
    config = config.resolve()
    out_dir = Path(out_dir)
    ctx, device = setup(config.device)
    try:
        return _train(config, out_dir, ctx, device, quiet, silent, on_epoch)
    finally:
        teardown(ctx)


def _train(config: TrainConfig, out_dir: Path, ctx: Distributed, device: torch.device, quiet: bool,
           silent: bool, on_epoch) -> dict:
    existing = ckpt.read_run(out_dir)
    if existing is not None:
        _check_same_settings(out_dir, existing["settings"], config)
        if existing["status"] == "finished":
            return existing

    image_size = config.model_options.get("input_size")
    load = lambda split, augment=False: data_lib.load(  # noqa: E731
        config.data, split, data_dir=config.data_dir, random_labels=config.random_labels, seed=config.data_seed,
        augment=augment, input_dim=config.input_dim or 10, image_size=image_size)
    train_set = load("train", config.augment)
    val_set = load("val") if "val" in data_lib.splits(config.data) else None
    test_set = load("test") if config.evaluate_test else None
    if config.patience is not None and val_set is None:
        raise FuFastError(f"early stopping needs a validation split, and {config.data} has none: "
                          f"drop --patience")
    options = dict(config.model_options)
    options.setdefault("num_classes", train_set.num_classes)

    torch.manual_seed(config.seed)   # the initial weights
    model = models.build(config.model, config.width, **options).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), config.optimizer, config.lr, config.momentum,
                                config.weight_decay)
    scheduler = build_scheduler(optimizer, config.schedule)
    state = {"epoch": 0, "best_val": -1.0, "best_epoch": 0, "since_best": 0, "history": [],
             "stopped_early": False, "done": False}
    if existing is not None and (out_dir / ckpt.CHECKPOINT_FILE).exists():
        state = ckpt.restore(out_dir / ckpt.CHECKPOINT_FILE, model, optimizer, scheduler)
    stepper = model
    if ctx.enabled:
        stepper = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        stepper = torch.compile(stepper)

    record = {
        "schema": ckpt.RUN_SCHEMA, "status": "running",
        "settings": _settings_record(config),
        "model": {**model.fu_fast_config, "parameters": models.parameter_count(model)},
        "data": {"train": train_set.info, "val": val_set.info if val_set is not None else None,
                 "test": test_set.info if test_set is not None else None},
        "world_size": ctx.world, "device": str(device),
    }
    if ctx.main and existing is None:   # run.json first: a checkpoint always has its settings beside it
        ckpt.write_run(out_dir, _record(record, state, "running"))
    progress = Progress(enabled=ctx.main and not silent, quiet=quiet)
    with progress:
        while not state["done"]:
            epoch = state["epoch"] + 1
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            loss, train_acc = _train_epoch(stepper, train_set, optimizer, config, ctx, device, epoch, progress)
            if not math.isfinite(loss):
                raise FuFastError(f"training diverged at epoch {epoch} (loss {loss}); lower the learning rate")
            scheduler.step()
            metrics = {"epoch": epoch, "lr": lr, "loss": loss, "train_accuracy": train_acc}
            if val_set is not None:
                metrics["val_accuracy"] = evaluate(model, val_set, config, ctx, device)
            if test_set is not None:
                metrics["test_accuracy"] = evaluate(model, test_set, config, ctx, device)
            metrics["seconds"] = time.perf_counter() - started
            improved = val_set is None or metrics["val_accuracy"] > state["best_val"]
            if improved:
                state["best_val"] = metrics.get("val_accuracy", -1.0)
                state["best_epoch"], state["since_best"] = epoch, 0
            else:
                state["since_best"] += 1
            state["stopped_early"] = config.patience is not None and state["since_best"] >= config.patience
            state["done"] = state["stopped_early"] or epoch >= config.epochs
            state["epoch"] = epoch
            state["history"].append(metrics)
            if ctx.main:
                weights = ckpt.model_file_record(model, {"epoch": epoch, "accuracy": _accuracies(metrics)})
                if improved:   # the weights to analyse: the best validation epoch, or the last
                    ckpt.save_torch(weights, out_dir / ckpt.BEST_FILE)
                if saves_epoch(config, epoch):   # before checkpoint.pt: a resumed run never skips one
                    ckpt.save_torch(weights, out_dir / ckpt.epoch_file(epoch))
                ckpt.save_torch({"model": model.state_dict(), "model_config": model.fu_fast_config,
                                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                 "state": state}, out_dir / ckpt.CHECKPOINT_FILE)
                ckpt.write_run(out_dir, _record(record, state, "running"))
            progress.epoch_done(metrics)
            if on_epoch is not None:
                on_epoch(metrics)
            ctx.barrier()
    if ctx.main:   # model.pt appears last: its presence means the run is complete
        if (out_dir / ckpt.BEST_FILE).exists():
            (out_dir / ckpt.BEST_FILE).replace(out_dir / ckpt.MODEL_FILE)
        ckpt.write_run(out_dir, _record(record, state, "finished"))
    ctx.barrier()
    return _record(record, state, "finished")


def saves_epoch(config: TrainConfig, epoch: int) -> bool:
    """Whether the run keeps the weights of ``epoch`` as epoch-N.pt (config resolved)."""
    return (config.save_every is not None and epoch % config.save_every == 0) or epoch in (config.save_epochs or ())


def _record(record: dict, state: dict, status: str) -> dict:
    return {**record, "status": status, "epochs": state["history"], "best_epoch": state["best_epoch"],
            "stopped_early": state["stopped_early"]}


def _train_epoch(stepper: nn.Module, dataset, optimizer, config: TrainConfig, ctx: Distributed,
                 device: torch.device, epoch: int, progress: Progress) -> tuple[float, float]:
    seed = epoch_seed(config.seed, epoch)
    torch.manual_seed(seed)   # dropout and augmentation (main process); workers derive from it
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    batches = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    if ctx.enabled:   # every rank needs at least one row of every global batch it steps on
        batches = [b for b in batches if len(b) >= ctx.world]
    loader = DataLoader(dataset, batch_sampler=[ctx.shard(b) for b in batches], num_workers=config.workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed))
    stepper.train()
    loss_sum, correct, seen = 0.0, 0, 0
    task = progress.start_epoch(epoch, config.epochs, len(batches))
    for global_batch, (inputs, labels) in zip(batches, loader):
        inputs, labels = _to_device(inputs, labels, device, config)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
            logits = stepper(inputs)
        summed = F.cross_entropy(logits.float(), labels, reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        (summed * (ctx.world / len(global_batch))).backward()
        optimizer.step()
        loss_sum += summed.item()
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
        progress.advance(task, loss_sum / max(seen, 1), correct / max(seen, 1), len(global_batch))
    loss_sum, correct, seen = ctx.sum([loss_sum, correct, seen], device)
    return loss_sum / seen, correct / seen


@torch.inference_mode()
def evaluate(model: nn.Module, dataset, config: TrainConfig, ctx: Distributed, device: torch.device) -> float:
    """Accuracy on a data set (each rank a shard; counts summed over ranks)."""
    was_training = model.training
    model.eval()
    indices = ctx.shard(list(range(len(dataset))))
    batches = [indices[i:i + config.batch_size] for i in range(0, len(indices), config.batch_size)]
    correct = 0
    for inputs, labels in DataLoader(dataset, batch_sampler=batches, num_workers=config.workers,
                                     pin_memory=device.type == "cuda"):
        inputs, labels = _to_device(inputs, labels, device, config)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
            correct += int((model(inputs).argmax(1) == labels).sum())
    model.train(was_training)
    correct, = ctx.sum([correct], device)
    return correct / len(dataset)


def _to_device(inputs, labels, device, config):
    inputs = inputs.to(device, non_blocking=True)
    if config.channels_last and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, labels.to(device, non_blocking=True)


def _accuracies(metrics: dict) -> dict:
    return {k.removesuffix("_accuracy"): v for k, v in metrics.items() if k.endswith("_accuracy")}


def _settings_record(config: TrainConfig) -> dict:
    return config.to_dict()


def _check_same_settings(out_dir: Path, recorded: dict, config: TrainConfig) -> None:
    current = _settings_record(config)
    for key, value in current.items():
        if key in _RUNTIME_ONLY:
            continue
        if recorded.get(key) != value:
            raise FuFastError(f"{out_dir} holds a run with {key}={recorded.get(key)!r}, not {value!r}: "
                              f"use another --out, or delete the directory to start over")


