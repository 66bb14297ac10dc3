"""`fu-fast info`: the build, the kernels chosen per GPU, and (--check) every kernel against its reference."""

from __future__ import annotations

import typer
from rich.table import Table

import fu_fast

from .console import out, user_errors


@user_errors
def info(check: bool = typer.Option(False, "--check", help="run every kernel against its CPU twin and reference, "
                                    "and a small analysis on each GPU against the CPU; exit 1 on any mismatch")
         ) -> None:
    """Build information: version, backends, CUDA, OpenMP, and the kernels each GPU uses (and why)."""
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
