"""The `fu-fast` command line (Typer). Installed as the package fu_fast.cli.

Every command turns a user's mistake (fu_fast.FuFastError) into one line on stderr and exit
code 2; results are written atomically, so a failed command leaves no partial file.
"""

from __future__ import annotations

import functools
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

import fu_fast
from fu_fast.atomic import check_writable_dir, check_writable_file
from fu_fast.errors import FuFastError

try:   # typer vendors click from 0.16 on; before, it depends on click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer
    from click.exceptions import ClickException
    NoArgsIsHelpError = ()

out = Console()
err = Console(stderr=True, soft_wrap=True)   # messages are never broken mid-line
RESUMABLE_COMMANDS = ("train", "sweep")      # a rerun of the same command continues where it stopped


class OneLineErrors(TyperGroup):
    """Typer's group, with a bad option value or a missing option reported like every other
    mistake: one `error:` line on stderr and exit code 2 (instead of a usage box)."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as e:     # `fu-fast` alone prints the help
            e.show()
            code = e.exit_code
        except ClickException as e:
            err.print(f"error: {e.format_message()}", highlight=False, markup=False)
            code = e.exit_code
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure frivolous (prunable and redundant) units of neural networks, fast.")


class Unit(str, Enum):
    position = "position"
    channel = "channel"


class Precision(str, Enum):
    fp32 = "fp32"
    tf32 = "tf32"
    bf16 = "bf16"


def user_errors(command):
    """Run a command; a FuFastError becomes `error: ...` on stderr and exit code 2."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FuFastError as e:
            err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            resume = "; run the same command again to resume" if command.__name__ in RESUMABLE_COMMANDS else ""
            err.print(f"interrupted{resume}", highlight=False, markup=False)
            raise typer.Exit(130) from None
    return run


@app.command()
@user_errors
def info(check: bool = typer.Option(False, "--check", help="run every kernel against its CPU twin and reference, "
                                    "and a small analysis on each GPU against the CPU; exit 1 on any mismatch")
         ) -> None:
    """Build information: version, compiled backends, CUDA architectures, OpenMP, and per GPU the
    kernels chosen and why any faster ones were passed over."""
    import warnings

    import torch

    from fu_fast import kernels

    with warnings.catch_warnings():
        # The table below says which kernels each GPU uses and why: no separate warning line.
        warnings.simplefilter("ignore", kernels.BackendWarning)
        build = fu_fast.build_info()
    gpu_kernels = build.pop("gpu_kernels", {})
    table = Table(show_header=False, box=None)
    for key, value in build.items():
        table.add_row(key, ", ".join(map(str, value)) if isinstance(value, list) else str(value))
    for i in range(torch.cuda.device_count() if build["gpu_usable"] else 0):
        choice = gpu_kernels[f"cuda:{i}"]
        table.add_row(f"cuda:{i}", f"{torch.cuda.get_device_name(i)}: {kernels.BACKEND_NAMES[choice['backend']]}")
        for backend, why in choice["skipped"].items():
            table.add_row("", f"{backend} passed over: {why}")
    out.print(table)
    if check:
        _run_kernel_checks()


def _run_kernel_checks() -> None:
    from fu_fast import kernel_checks

    out.print()
    checks = []
    for check in kernel_checks.iter_checks():
        out.print(check.line(), highlight=False, markup=False, soft_wrap=True)
        checks.append(check)
    failed = [c for c in checks if not c.passed]
    no_gpu = kernel_checks.no_gpu_reason()
    where = "cpu only; no GPU was usable: " + no_gpu if no_gpu else "cpu and every GPU"
    if failed:
        out.print(f"verdict: {len(failed)} of {len(checks)} checks FAILED ({where})", highlight=False, markup=False,
                  soft_wrap=True)
        raise typer.Exit(1)
    out.print(f"verdict: all {len(checks)} checks passed ({where})", highlight=False, markup=False, soft_wrap=True)


@app.command()
@user_errors
def train(
    model: str = typer.Option(..., help="mlp, alexnet, resnet56, resnet18, inception_v3, inception_v3_layer"),
    out_dir: Path = typer.Option(..., "--out", help="run directory (created; an unfinished run there resumes)"),
    width: float = typer.Option(1.0, help="width factor: units and filters of every layer are multiplied by it"),
    data: Optional[str] = typer.Option(None, help="synthetic, cifar10 or imagenet [default: the model's]"),
    data_dir: Optional[Path] = typer.Option(None, help="where cifar-10-batches-py or the ImageFolder tree lies"),
    input_dim: Optional[int] = typer.Option(None, help="synthetic data and MLP input dimension (10 or 10000)"),
    image_size: Optional[int] = typer.Option(None, help="image side [default: 32 CIFAR, 224 ResNet18, 299 Inception]"),
    random_labels: bool = typer.Option(False, help="train on fixed random labels (no augmentation)"),
    data_seed: int = typer.Option(0, help="seed of the data set (synthetic teacher, random labels)"),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="data augmentation [default: the model's]"),
    init: Optional[str] = typer.Option(None, help="glorot|he|lecun _normal|_uniform, gaussian:STD, truncated_normal:STD"),
    dropout: Optional[float] = typer.Option(None, help="dropout probability where the model has dropout"),
    optimizer: Optional[str] = typer.Option(None, help="sgd_momentum, sgd, adam or rmsprop"),
    lr: Optional[float] = typer.Option(None, help="learning rate (before the factor k)"),
    momentum: float = typer.Option(0.9, help="momentum of sgd_momentum and rmsprop"),
    weight_decay: Optional[float] = typer.Option(None, help="L2 weight decay"),
    schedule: Optional[str] = typer.Option(None, help="constant, exp:G, exp:G/E, step:E1,E2[*G] (per epoch)"),
    batch_size: Optional[int] = typer.Option(None, help="global batch size (before the factor k)"),
    k: float = typer.Option(1.0, help="scales batch size and learning rate together"),
    epochs: Optional[int] = typer.Option(None, help="number of epochs (the most, with early stopping)"),
    patience: Optional[int] = typer.Option(None, help="early stopping: epochs without a better validation accuracy"),
    seed: int = typer.Option(0, help="seed of the initial weights, shuffling, dropout and augmentation"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N [default: cuda if usable]"),
    amp: bool = typer.Option(False, help="bfloat16 autocast (GPU)"),
    channels_last: bool = typer.Option(False, help="channels_last memory format (GPU convolutions)"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model"),
    workers: int = typer.Option(0, help="data-loading worker processes"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="one line per epoch instead of progress bars"),
) -> None:
    """Train a model of the zoo with the paper's settings (each one overridable).

    Multi-GPU or multi-node: run it under torchrun, e.g.
    `torchrun --nproc_per_node 8 -m fu_fast.cli train ...`.
    """
    from fu_fast.train import TrainConfig, train as run_training

    check_writable_dir(out_dir)
    options = {key: value for key, value in (("init", init), ("dropout", dropout), ("input_dim", input_dim),
                                             ("input_size", image_size)) if value is not None}
    config = TrainConfig(model=model, width=width, model_options=options, data=data,
                         data_dir=str(data_dir) if data_dir else None, input_dim=input_dim,
                         random_labels=random_labels, data_seed=data_seed, augment=augment, optimizer=optimizer,
                         lr=lr, momentum=momentum, weight_decay=weight_decay, schedule=schedule,
                         batch_size=batch_size, k=k, epochs=epochs, patience=patience, seed=seed, device=device,
                         amp=amp, channels_last=channels_last, compile=compile, workers=workers)
    record = run_training(config, out_dir, quiet=quiet)
    last = record["epochs"][-1] if record["epochs"] else {}
    accuracies = ", ".join(f"{k.removesuffix('_accuracy')} {v:.4f}" for k, v in last.items() if k.endswith("_accuracy"))
    err.print(f"{out_dir}: {len(record['epochs'])} epochs, best epoch {record['best_epoch']}"
              f"{', stopped early' if record['stopped_early'] else ''}; last: {accuracies}", highlight=False)


@app.command()
@user_errors
def analyze(
    model: Optional[str] = typer.Option(None, help="model name [default: the checkpoint's]"),
    width: Optional[float] = typer.Option(None, help="width factor [default: the checkpoint's; 1 without one]"),
    checkpoint: Optional[Path] = typer.Option(None, help="a run directory of fu-fast train, or a .pt file"),
    data: Optional[str] = typer.Option(None, help="synthetic, cifar10 or imagenet [default: the run's]"),
    data_dir: Optional[Path] = typer.Option(None, help="data location [default: the run's]"),
    split: str = typer.Option("test", help="train, val or test (imagenet: val and test are the validation set)"),
    input_dim: Optional[int] = typer.Option(None, help="synthetic data input dimension"),
    image_size: Optional[int] = typer.Option(None, help="image side [default: the model's]"),
    random_labels: Optional[bool] = typer.Option(None, "--random-labels/--true-labels",
                                                 help="labels of the data [default: the run's]"),
    limit: Optional[int] = typer.Option(None, help="analyse only the first N examples"),
    layers: Optional[List[str]] = typer.Option(None, "--layers", help="layer to analyse (repeatable) [default: the model's]"),
    tolerance: float = typer.Option(0.2, help="label-agreement tolerance of the prunable fraction"),
    pca_tolerance: float = typer.Option(0.05, help="variance share the kept components may leave out"),
    repeats: int = typer.Option(3, help="random ablation orders; the prunable fraction is their max"),
    levels: int = typer.Option(21, help="ablation fractions from 0 to 1"),
    sample_cap: int = typer.Option(50_000, help="most sampled positions per conv layer for redundancy"),
    unit: Unit = typer.Option(Unit.position, help="conv ablation unit: every position, or whole channels"),
    seed: int = typer.Option(0, help="seed of the masks, the position sample and an untrained model's weights"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N [default: cuda if usable; under torchrun, "
                                                    "the local rank's GPU]"),
    batch_size: Optional[int] = typer.Option(None, help="rows per batch (results do not depend on it)"),
    precision: Optional[Precision] = typer.Option(None, help="fp32 (TF32 off), tf32 (GPU tensor cores) or bf16 "
                                                               "(autocast) [default: fp32]"),
    channels_last: bool = typer.Option(False, "--channels-last", help="NHWC memory for conv layers (faster on GPUs)"),
    workers: Optional[int] = typer.Option(None, help="data-loading processes [default: 8 on a GPU, 0 on the CPU]"),
    result_file: Optional[Path] = typer.Option(None, "--out", help="write the JSON result document here"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no table, no progress"),
) -> None:
    """Prunability, redundancy and correlations of a model's layers, in one pass over the data.

    Many GPUs or nodes: run it under torchrun (`torchrun --nproc_per_node 8 -m fu_fast.cli analyze ...`);
    each process analyses a shard of the data and the result equals a single process's.
    """
    import torch


    from fu_fast import data as data_lib
    from fu_fast import models
    from fu_fast.train import load_model, read_run
    from fu_fast.train.distributed import setup, teardown

    from fu_fast.analysis.inputs import DEFAULT_BATCH_SIZE

    if result_file is not None:
        check_writable_file(result_file)
    if batch_size is not None and batch_size < 1:
        raise FuFastError(f"--batch-size must be positive, got {batch_size}")
    if workers is not None and workers < 0:
        raise FuFastError(f"--workers must be 0 or more, got {workers}")
    run = None
    if checkpoint is not None:
        net, _ = load_model(checkpoint, model=model, width=width)
        run = read_run(checkpoint if checkpoint.is_dir() else checkpoint.parent)
        _check_agrees_with_checkpoint(net.fu_fast_config, {"--input-dim": ("input_dim", input_dim),
                                                           "--image-size": ("input_size", image_size)})
    else:
        if model is None:
            raise FuFastError("say which model to analyse: --model (and --checkpoint for trained weights)")
        options = {k: v for k, v in (("input_dim", input_dim), ("input_size", image_size)) if v is not None}
        torch.manual_seed(seed)   # an untrained model: the same weights in every process and every run
        net = models.build(model, 1.0 if width is None else width, **options)
    dataset = data_lib.for_analysis(net.fu_fast_config, trained=run["settings"] if run else None, name=data,
                                    split=split, data_dir=str(data_dir) if data_dir else None,
                                    random_labels=random_labels, image_size=image_size, limit=limit)
    # Under torchrun every process analyses a shard of the data (fu_fast.analyze combines them).
    ctx, target = setup(device)
    on_gpu = target.type == "cuda"
    # Decoding images is the bottleneck of a GPU analysis: worker processes and pinned batches
    # let it overlap with the passes (the engine copies batch i+1 while computing batch i).
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size or DEFAULT_BATCH_SIZE, shuffle=False,
                                         num_workers=(8 if on_gpu else 0) if workers is None else workers,
                                         pin_memory=on_gpu)
    try:
        with _progress(quiet or not ctx.main, len(dataset), "analyse") as report:
            result = fu_fast.analyze(net.to(target), loader, layers=layers or None, tolerance=tolerance,
                                     pca_tolerance=pca_tolerance, repeats=repeats, levels=levels,
                                     sample_cap=sample_cap, unit=unit.value, seed=seed, device=target,
                                     precision=precision.value if precision else None,
                                     channels_last=channels_last, progress=report)
    finally:
        teardown(ctx)
    if not ctx.main:
        return
    if result_file is not None:
        result.save(result_file)
    if not quiet:
        out.print(_layer_table(result))
        if result_file is not None:
            err.print(f"wrote {result_file}", highlight=False)


def _check_agrees_with_checkpoint(config: dict, flags: dict) -> None:
    """Refuse a flag that would describe another model than the checkpoint holds (it would be
    ignored): {flag: (build option, value given or None)}."""
    options = config.get("options", {})
    for flag, (option, value) in flags.items():
        if value is not None and options.get(option) != value:
            recorded = f"{option} {options[option]}" if option in options else f"no {option} option"
            raise FuFastError(f"{flag} {value} contradicts the checkpoint's {config.get('name', 'model')} "
                              f"({recorded}); leave it out")


@app.command()
@user_errors
def sweep(
    config_file: Optional[Path] = typer.Argument(None, metavar="[CONFIG.toml]", help="a sweep configuration file"),
    preset: Optional[str] = typer.Option(None, help="a preset of the paper's experiments (see --list-presets)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="sweep directory (an interrupted sweep resumes)"),
    shard: Optional[str] = typer.Option(None, help="I/N: run only members I, I+N, I+2N, ... (job arrays)"),
    data_dir: Optional[Path] = typer.Option(None, help="where the data set lies (cifar10, imagenet presets)"),
    trials: Optional[int] = typer.Option(None, help="independently trained networks per width [default: the sweep's]"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N [default: cuda if usable]"),
    report: bool = typer.Option(True, "--report/--no-report", help="write the report once every member is done"),
    list_presets: bool = typer.Option(False, "--list-presets", help="list the presets and exit"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output"),
) -> None:
    """Train and analyse every member of a width series (models x widths x trials x variants)."""
    from fu_fast.sweep import PRESETS, Shard, load_config, run_sweep

    if list_presets:
        for name, preset_config in PRESETS.items():
            out.print(f"{name:28} {preset_config['description']}", highlight=False, soft_wrap=True)
        return
    if out_dir is None:
        raise FuFastError("say where the sweep goes: --out SWEEP_DIR")
    check_writable_dir(out_dir)
    config = load_config(config_file, preset, trials)
    members = config.members()
    with _progress(quiet, len(members), "sweep") as advance:
        finished = {"count": 0}

        def on_member(member, event):
            if event != "start":   # done, done before, or another shard's
                finished["count"] += 1
            if advance is not None:
                advance(finished["count"], len(members), member.id if event == "start" else "")

        record = run_sweep(config, out_dir, shard=Shard.parse(shard), data_dir=str(data_dir) if data_dir else None,
                           device=device, quiet=True, on_member=on_member)
    pending = sum(m["status"] != "done" for m in record["members"])
    if pending:
        err.print(f"{out_dir}: {len(members) - pending}/{len(members)} members done; run the other shards "
                  f"(or this command again) to finish", highlight=False)
    elif report:
        _write_report(out_dir, quiet)


@app.command("report")
@user_errors
def report_command(
    sweep_dir: Path = typer.Argument(..., help="a sweep directory of fu-fast sweep"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="do not print the summary"),
) -> None:
    """Gain table (markdown) and the paper's figures, into SWEEP_DIR/report/."""
    _write_report(sweep_dir, quiet)


def _write_report(sweep_dir: Path, quiet: bool) -> None:
    from fu_fast.report import write_report

    folder = write_report(sweep_dir)
    if not quiet:
        out.print((folder / "summary.md").read_text(), markup=False, highlight=False, soft_wrap=True)
        err.print(f"report in {folder}/", highlight=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def bench(
    ctx: typer.Context,
    which: str = typer.Argument("cpu", help="cpu (naive path vs fu-fast), gpu (ResNet18, kernels, floors) or "
                                             "train (training speed)"),
) -> None:
    """The benchmarks of benchmarks/; further options go to the benchmark (fu-fast bench gpu --help)."""
    from fu_fast.benchmarks import bench_cpu, bench_gpu, bench_train

    scripts = {"cpu": bench_cpu, "gpu": bench_gpu, "train": bench_train}
    if which not in scripts:
        raise FuFastError(f"unknown benchmark {which!r}; choose one of {', '.join(scripts)}")
    scripts[which].main(ctx.args)


def _layer_table(result) -> Table:
    m = result.model
    title = (f"{m['name']} x{m['width']} ({m['parameters']:,} parameters"
             + (f", accuracy {m['accuracy']:.4f}" if m.get("accuracy") is not None else "") + ")")
    table = Table(title=title)
    for column in ("layer", "kind", "units", "prunable", "prunable units", "redundant units", "mean |r|"):
        table.add_column(column, justify="left" if column in ("layer", "kind") else "right")
    for name, layer in result.layers.items():
        # A dead or constant layer has no correlations (fewer than two units vary).
        mean_abs_r = "dead" if layer.mean_abs_r is None else f"{layer.mean_abs_r:.3f}"
        table.add_row(name, layer.kind, str(layer.units), f"{layer.prunable_fraction:.3f}",
                      f"{layer.prunable_units:,.1f}", str(layer.redundant_units), mean_abs_r)
    return table


class _progress:
    """A rich progress bar (nothing when quiet); the ``with`` value is an update function
    (done, total, note) or None."""

    def __init__(self, quiet: bool, total: int, label: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = None if quiet else Progress(label, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                               TextColumn("{task.fields[note]}"), console=err)
        self.total = total

    def __enter__(self):
        if self.bar is None:
            return None
        self.bar.__enter__()
        self.task = self.bar.add_task("", total=self.total, note="")
        return lambda done, total, note="": self.bar.update(self.task, completed=done, total=total, note=note)

    def __exit__(self, error_type, *exc):
        if self.bar is not None:
            if error_type is None:
                self.bar.__exit__(error_type, *exc)
            else:
                # The error line alone: no half-filled bar above it, and not the empty line that
                # Progress.stop prints on a non-terminal; the live display stops without a trace.
                self.bar.remove_task(self.task)
                self.bar.live.transient = True
                self.bar.live.stop()


# Commands defined in their own modules register themselves on `app` when imported.
from . import compress_command, visualize_command  # noqa: E402,F401


def main() -> None:
    app(prog_name="fu-fast")


if __name__ == "__main__":
    sys.exit(main())
