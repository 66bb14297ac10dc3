"""`fu-fast bench`: the benchmarks of benchmarks/ (installed as fu_fast.benchmarks)."""

from __future__ import annotations

import typer

from fu_fast.errors import FuFastError

from .console import user_errors


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
