"""CPU benchmark: the naive ablation path (one full forward per mask) against the engine.

Both paths run in one process, interleaved (naive, engine, engine, naive, ...), and the
median of several repetitions of each is reported, with the ratio naive / engine, so
that a shared, noisy machine affects both alike. Absolute seconds are machine-dependent;
the ratios are the result.

    python benchmarks/bench_cpu.py                 # full run (a few minutes on 2 cores)
    python benchmarks/bench_cpu.py --quick         # smoke test (seconds)
    python benchmarks/bench_cpu.py --repeats 5 --json bench.json
    python benchmarks/bench_cpu.py --threads 0     # torch's / OpenBLAS's own thread counts

Threads default to 1 (torch, hence fu_fast's OpenMP kernels, which share torch's OpenMP
runtime, and NumPy's OpenBLAS): on a shared machine a multi-threaded run stalls at every
parallel region whose threads are not all scheduled, which swamps the comparison.

What is timed, per case:
  naive   fu_fast.reference.naive_ablation_counts on every analysed layer, with the
          same 21 levels x 3 repeats = 63 masks per layer as the engine (p = 0 included,
          as the paper's code runs it), the same batches, model.eval(), inference mode.
  engine  the whole fu_fast.analyze call (ablation, covariance, PCA, checks), with its own
          batch size.
  engine ablation   the engine's masked passes alone (the time spent in the engine's pass
          functions; the first layer's pass also carries the base forward), against the naive
          masked passes alone (the naive forwards during which the layer's mask hook is registered).
  floor   what any one-pass analysis must compute: one plain forward over the data, plus the
          part of the model after each layer run on the engine's masked copies (made beforehand,
          untimed); "/floor" is engine / floor.

The benchmark also checks that the naive counts give the engine's curves: the naive
count of (repeat r, level i) divided by the number of examples must equal
result.layers[layer].curves[r][i] (the engine sets the p = 0 point to 1.0 without a pass).
It compares the timed float32 runs, and float64 copies of the models on a subset of the
examples, where the two paths must agree exactly.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

import fu_fast
from fu_fast import kernels, models, reference
from fu_fast.hooks import forward_hooks
from fu_fast.analysis import engine
from fu_fast.analysis import masks

LEVELS = 21
MASK_REPEATS = 3
SEED = 0


# ----------------------------------------------------------------------------- models
# The zoo's MLP and AlexNet (fu_fast.models), He-normal with zero biases, so that an untrained
# model's predictions depend on its input (small default inits shrink the signal layer by layer
# until the last bias decides every label, which would make the curves and their check trivial).

def zoo_model(name: str, width: float, **options) -> nn.Module:
    return models.build(name, width, init="he_normal", num_classes=10, **options).eval()


# ----------------------------------------------------------------------------- cases

@dataclass
class Case:
    name: str
    description: str
    model: nn.Module
    inputs: torch.Tensor
    layers: tuple[str, ...]
    batch_size: int
    expected_ratio: float
    settings: dict = field(default_factory=dict)
    levels: int = LEVELS
    mask_repeats: int = MASK_REPEATS
    check_examples: int | None = None   # at most this many examples in the float64 check


def build_cases(quick: bool, cnn_examples: int, cnn_width: float, mlp_examples: int,
                batch_size: int, only: list[str] | None) -> list[Case]:
    """The MLP and the AlexNet by default; "resnet18" (torchvision's, inner layers) on request."""
    generator = torch.Generator().manual_seed(SEED)
    cases = []
    if quick:
        mlp = dict(d_in=1000, hidden=64, examples=64)
        cnn = dict(width=0.125, examples=8)
        batch_size = min(batch_size, 32)
    else:
        mlp = dict(d_in=10_000, hidden=512, examples=mlp_examples)
        cnn = dict(width=cnn_width, examples=cnn_examples)
    if not only or "mlp" in only:
        torch.manual_seed(SEED)
        # The zoo's MLP has 128 hidden units at width 1.
        model = zoo_model("mlp", mlp["hidden"] / 128, input_dim=mlp["d_in"])
        inputs = torch.randn(mlp["examples"], mlp["d_in"], generator=generator)
        cases.append(Case("mlp", f"MLP {mlp['d_in']}-{mlp['hidden']}-10, {mlp['examples']} examples, layer relu1",
                          model, inputs, tuple(model.analysis_layers), batch_size, 10.0, mlp))
    if not only or "cnn" in only:
        torch.manual_seed(SEED + 1)
        model = zoo_model("alexnet", cnn["width"])
        inputs = torch.randn(cnn["examples"], 3, 32, 32, generator=generator)
        cases.append(Case("cnn", f"AlexNet-CIFAR x{cnn['width']:g}, {cnn['examples']} images 32x32x3, "
                          "layers norm1, norm2, relu3, relu4",
                          model, inputs, tuple(model.analysis_layers), batch_size, 3.0, cnn))
    if only and "resnet18" in only:
        cases.append(resnet18_case(quick, generator, batch_size))
    return cases


def resnet18_case(quick: bool, generator: torch.Generator, batch_size: int) -> Case:
    """torchvision's ResNet18 at width 1, analysed at the first conv inside each of its 8 blocks:
    none is a cut point (the shortcut goes around it), so the engine makes the masked copies at
    the block's input and runs the block's conv1 on one copy (fu_fast.analysis.ablation); the
    naive path runs the whole network per mask. 11 levels x 2 repeats keep the naive path near
    a minute on one core."""
    from torchvision.models import resnet18

    torch.manual_seed(SEED + 2)
    model = resnet18(weights=None).eval()
    examples, size = (4, 64) if quick else (32, 112)
    inputs = torch.randn(examples, 3, size, size, generator=generator)
    layers = tuple(f"layer{stage}.{block}.conv1" for stage in range(1, 5) for block in range(2))
    return Case("resnet18", f"torchvision ResNet18, {examples} images {size}x{size}x3, layers "
                f"layer1.0.conv1 ... layer4.1.conv1 (inside the blocks, not cut points)",
                model, inputs, layers, batch_size, 2.0, {"examples": examples, "image_size": size},
                levels=11, mask_repeats=2, check_examples=4)


# ----------------------------------------------------------------------------- the two paths

def layer_units(model: nn.Module, inputs: torch.Tensor, layers) -> dict[str, int]:
    """n of every analysed layer (unit = position: every element of one example's output)."""
    modules = dict(model.named_modules())
    units = {}

    def record(name):
        def hook(_m, _i, output):
            units[name] = output[0].numel()
        return hook

    with torch.inference_mode(), forward_hooks([(modules[name], record(name)) for name in layers]):
        model(inputs[:1])
    return units


def naive_masks(layer: str, units: int, levels: int = LEVELS, repeats: int = MASK_REPEATS
                ) -> tuple[list[int], list[int]]:
    """The masks of one layer in (repeat, level) order, p = 0 included (63 by default)."""
    keys, thresholds = [], []
    for r in range(repeats):
        key = masks.mask_key(SEED, layer, r)
        for p in masks.level_grid(levels):
            keys.append(key)
            thresholds.append(masks.threshold(p, units))
    return keys, thresholds


@contextmanager
def _forward_timer(model: nn.Module, module: nn.Module, sink: list[float]):
    """Adds to sink the duration of every forward of model during which module has a
    forward hook (in the naive path: the masked passes; the unmasked one has none)."""
    start = {}

    def before(_m, _i):
        start["t"] = time.perf_counter()

    def after(_m, _i, _o):
        if module._forward_hooks:  # noqa: SLF001 - benchmark-only classification
            sink.append(time.perf_counter() - start["t"])

    with forward_hooks([(model, after)], pre_hooks=[(model, before)]):
        yield


def run_naive(case: Case, inputs: torch.Tensor, model: nn.Module, units: dict[str, int]):
    """Seconds (wall, CPU, masked passes), counts per layer."""
    modules = dict(model.named_modules())
    batches = [inputs[s:s + case.batch_size] for s in range(0, inputs.shape[0], case.batch_size)]
    model.eval()
    counts, masked = {}, []
    gc.collect()
    cpu0, started = time.process_time(), time.perf_counter()
    for layer in case.layers:
        keys, thresholds = naive_masks(layer, units[layer], case.levels, case.mask_repeats)
        with _forward_timer(model, modules[layer], masked):
            counts[layer] = reference.naive_ablation_counts(model, modules[layer], batches, keys, thresholds, 1)
    return time.perf_counter() - started, time.process_time() - cpu0, sum(masked), counts


@contextmanager
def patched_passes(wrap):
    """Replaces the engine's masked-pass functions (the first layer's, which also carries the
    base forward, and the others'; it calls them through its module's globals) by
    ``wrap(original)`` for the duration of the block."""
    originals = {name: getattr(engine, name) for name in ("_lead_pass", "_masked_pass")}
    for name, original in originals.items():
        setattr(engine, name, wrap(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(engine, name, original)


def _masked_pass_timer(sink: list[float]):
    """Adds to sink the duration of each of the engine's masked passes."""
    def timed(original):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                sink.append(time.perf_counter() - t0)
        return run
    return patched_passes(timed)


def run_engine(case: Case, inputs: torch.Tensor, model: nn.Module):
    """Seconds (wall and CPU of the analyze call, masked passes), result. The engine picks its
    own batch size (on the CPU, from its memory budget)."""
    masked = []
    gc.collect()
    with _masked_pass_timer(masked):
        cpu0, started = time.process_time(), time.perf_counter()
        result = fu_fast.analyze(model, inputs, layers=list(case.layers), repeats=case.mask_repeats,
                                 levels=case.levels, seed=SEED, unit="position")
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
    return seconds, cpu, sum(masked), result


@torch.inference_mode()
def run_floor(case: Case, inputs: torch.Tensor, model: nn.Module, units: dict[str, int]) -> float | None:
    """Seconds of what any one-pass analysis must compute: one plain forward over the data (base
    labels, activations), plus, per layer, the part of the model after it on the engine's masked
    copies of its output (made beforehand, untimed). The zoo's mlp and alexnet are chains, so the
    part after a layer is the slice of children after it; other models (not an nn.Sequential)
    have no floor here."""
    if not isinstance(model, nn.Sequential):
        return None
    names, children = zip(*model.named_children())
    batches = inputs.split(case.batch_size)
    started = time.perf_counter()
    for x in batches:
        model(x)
    seconds = time.perf_counter() - started
    for layer in case.layers:
        position = names.index(layer)
        prefix, suffix = nn.Sequential(*children[:position + 1]), nn.Sequential(*children[position + 1:])
        plan = masks.MaskPlan.build(layer, units[layer], masks.level_grid(case.levels), case.mask_repeats, SEED)
        for x in batches:
            expanded = kernels.expand_masked(prefix(x), list(plan.keys), list(plan.thresholds), 1)
            started = time.perf_counter()
            suffix(expanded)
            seconds += time.perf_counter() - started
    return seconds


def compare(counts: dict[str, np.ndarray], result, examples: int, levels: int = LEVELS,
            repeats: int = MASK_REPEATS) -> dict:
    """Curve points where count / N differs from the engine's curve; must be none."""
    shape = (repeats, levels)
    out = {"points": 0, "mismatches": 0, "max_abs_diff": 0.0, "p0_not_full": 0, "layers": {}}
    for layer, layer_counts in counts.items():
        curves = result.layers[layer].curves
        naive = (layer_counts.astype(np.float64) / examples).reshape(shape)
        engine = np.asarray(curves, dtype=np.float64)
        diff = np.abs(naive - engine)
        bad = int((naive != engine).sum())
        out["layers"][layer] = {"mismatches": bad, "max_abs_diff": float(diff.max()),
                                "prunable_fraction": result.layers[layer].prunable_fraction}
        out["points"] += naive.size
        out["mismatches"] += bad
        out["max_abs_diff"] = max(out["max_abs_diff"], float(diff.max()))
        out["p0_not_full"] += int((layer_counts.reshape(shape)[:, 0] != examples).sum())
    return out


def _double(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double()


# ----------------------------------------------------------------------------- driver

def bench_case(case: Case, repeats: int, check_examples: int, log) -> dict:
    model, inputs = case.model, case.inputs
    units = layer_units(model, inputs, case.layers)
    log(f"\n[{case.name}] {case.description}; batch {case.batch_size}; "
        f"units {', '.join(f'{k}={v}' for k, v in units.items())}")

    # Warm-up (untimed): first-call costs of both paths on a few examples.
    warm = inputs[:min(inputs.shape[0], 8)]
    modules = dict(model.named_modules())
    for layer in case.layers:
        keys, thresholds = naive_masks(layer, units[layer], case.levels, case.mask_repeats)
        reference.naive_ablation_counts(model, modules[layer], [warm], keys[:2], thresholds[:2], 1)
    fu_fast.analyze(model, warm, layers=list(case.layers), repeats=1, levels=3, batch_size=case.batch_size)

    samples = {"naive": [], "engine": [], "naive_masked": [], "engine_masked": [], "naive_cpu": [], "engine_cpu": [],
               "floor": []}
    last_counts, last_result, stable = None, None, True
    for rep in range(repeats):
        order = ("naive", "engine") if rep % 2 == 0 else ("engine", "naive")
        for path in order:
            if path == "naive":
                seconds, cpu, masked, counts = run_naive(case, inputs, model, units)
                if last_counts is not None:
                    stable &= all(np.array_equal(counts[k], last_counts[k]) for k in counts)
                last_counts = counts
            else:
                seconds, cpu, masked, result = run_engine(case, inputs, model)
                if last_result is not None:
                    stable &= all(result.layers[k].curves == last_result.layers[k].curves for k in case.layers)
                last_result = result
            samples[path].append(seconds)
            samples[path + "_masked"].append(masked)
            samples[path + "_cpu"].append(cpu)
            log(f"  rep {rep + 1}/{repeats} {path:6s} {seconds:8.3f} s  (masked passes {masked:8.3f} s; "
                f"CPU time {cpu:8.3f} s)")
        floor = run_floor(case, inputs, model, units)
        if floor is not None:
            samples["floor"].append(floor)
            log(f"  rep {rep + 1}/{repeats} floor  {floor:8.3f} s")

    med = {k: statistics.median(v) if v else None for k, v in samples.items()}
    record = {
        "case": case.name, "description": case.description, "settings": case.settings,
        "batch_size": case.batch_size, "examples": int(inputs.shape[0]), "layers": list(case.layers),
        "levels": case.levels, "mask_repeats": case.mask_repeats,
        "units": units, "masks_per_layer_naive": case.mask_repeats * case.levels,
        "masks_per_layer_engine": {k: masks.MaskPlan.build(k, units[k], masks.level_grid(case.levels),
                                                            case.mask_repeats, SEED).num_masks for k in case.layers},
        "samples": samples, "median": med,
        "ratio": med["naive"] / med["engine"],
        "ratio_ablation": med["naive_masked"] / med["engine_masked"] if med["engine_masked"] else None,
        "ratio_cpu": med["naive_cpu"] / med["engine_cpu"] if med["engine_cpu"] else None,
        "ratio_per_rep_median": statistics.median(n / e for n, e in zip(samples["naive"], samples["engine"])),
        "engine_over_floor": med["engine"] / med["floor"] if med["floor"] else None,
        "expected_ratio": case.expected_ratio,
        "repeatable": stable,
        "agreement_fp32": compare(last_counts, last_result, inputs.shape[0], case.levels, case.mask_repeats),
    }
    record["meets_expectation"] = record["ratio"] >= case.expected_ratio
    log("  prunable fractions (engine): " + ", ".join(
        f"{k} {last_result.layers[k].prunable_fraction:.3f}" for k in case.layers))

    if case.check_examples is not None:
        check_examples = min(check_examples, case.check_examples)
    if check_examples:
        sub = inputs[:min(check_examples, inputs.shape[0])].double()
        model64 = _double(model)
        counts64 = run_naive(case, sub, model64, units)[-1]
        result64 = run_engine(case, sub, model64)[-1]
        agreement = compare(counts64, result64, sub.shape[0], case.levels, case.mask_repeats)
        record["agreement_fp64"] = dict(agreement, examples=int(sub.shape[0]))
    return record


def _agree_text(check: dict | None) -> str:
    if check is None:
        return "-"
    ok = check["mismatches"] == 0 and check["p0_not_full"] == 0
    text = "yes" if ok else f"NO ({check['mismatches']}/{check['points']} pts, max {check['max_abs_diff']:.3g})"
    return text


def print_table(records: list[dict], out=None) -> None:
    """Wall-clock medians and ratio naive / engine; then the median of the per-repetition
    ratios, the ratio of CPU-time medians, and the masked passes alone. ``out`` defaults to
    the sys.stdout of the moment (not of import time, which a caller may have replaced)."""
    out = out or sys.stdout
    def x(v):
        return f"{v:6.1f}x" if v else "     -"

    head = (f"{'case':8s} {'naive s':>8s} {'engine s':>8s} {'ratio':>7s} {'expect':>6s} | {'floor s':>7s} "
            f"{'/floor':>6s} | {'per-rep':>7s} {'CPU-t':>7s} | {'naive abl':>9s} {'eng. abl':>8s} {'ratio':>7s} | "
            f"{'agree fp32':<10s} {'fp64':<4s}")
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in records:
        m = r["median"]
        floor = f"{m['floor']:7.2f} {r['engine_over_floor']:5.2f}x" if m["floor"] else f"{'-':>7s} {'-':>6s}"
        print(f"{r['case']:8s} {m['naive']:8.2f} {m['engine']:8.2f} {x(r['ratio'])} "
              f"{'>=' + format(r['expected_ratio'], 'g'):>6s} | {floor} | "
              f"{x(r['ratio_per_rep_median'])} {x(r['ratio_cpu'])} | "
              f"{m['naive_masked']:9.2f} {m['engine_masked']:8.2f} {x(r['ratio_ablation'])} | "
              f"{_agree_text(r['agreement_fp32']):<10s} {_agree_text(r.get('agreement_fp64')):<4s}", file=out)


def set_blas_threads(threads: int) -> int | None:
    """Best effort: limit the OpenBLAS bundled with NumPy (used by the engine's eigvalsh) to
    ``threads``. Returns the previous setting, or None if no loaded OpenBLAS took it."""
    import ctypes
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower()})
    except OSError:
        return None
    previous = None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                if setter is None or getter is None:
                    continue
                getter.restype = ctypes.c_int
                previous = int(getter())
                setter(ctypes.c_int(threads))
                return previous
    return previous


def environment() -> dict:
    info = fu_fast.build_info()
    return {"python": sys.version.split()[0], "torch": torch.__version__, "fu_fast": fu_fast.__version__,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
            "platform": platform.platform(), "processor": platform.processor(),
            "build": {k: info.get(k) for k in ("version", "backends", "openmp") if k in info}}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny models and data: a smoke test of seconds")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repetitions of each path, interleaved (default 3; 1 with --quick)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--cases", nargs="+", choices=("mlp", "cnn", "resnet18"),
                   help="run only these cases (default: mlp and cnn; resnet18, torchvision's ResNet18 at inner "
                        "layers, runs when named)")
    p.add_argument("--batch-size", type=int, default=1000,
                   help="rows per batch of the naive path and the floor (default 1000); the engine picks its own")
    p.add_argument("--mlp-examples", type=int, default=1000, help="MLP examples (default 1000)")
    p.add_argument("--cnn-examples", type=int, default=64, help="CNN images (default 64)")
    p.add_argument("--cnn-width", type=float, default=0.5,
                   help="CNN channel-width multiplier of AlexNet-CIFAR (default 0.5: 48/128 conv, 192/96 FC)")
    p.add_argument("--check-examples", type=int, default=None,
                   help="examples of the float64 agreement check, per case (default 16; 4 with --quick; 0 skips it)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads of torch (and of fu_fast's OpenMP kernels, which share its runtime) and of "
                        "NumPy's OpenBLAS; 0 leaves their own defaults (default 1: on a shared machine, "
                        "multi-threaded runs stall whenever a thread is descheduled, which distorts ratios)")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.check_examples is None:
        args.check_examples = 4 if args.quick else 16
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch_threads, blas_threads = torch.get_num_threads(), None
    if args.threads:
        torch.set_num_threads(args.threads)
        blas_threads = set_blas_threads(args.threads)
    try:
        return _run(args, blas_threads is not None)
    finally:  # leave the process as it was (main may run inside a test session)
        torch.set_num_threads(torch_threads)
        if blas_threads is not None:
            set_blas_threads(blas_threads)


def _run(args, blas_set: bool) -> dict:
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    env = environment()
    env["threads_option"] = args.threads
    env["blas_threads_set"] = blas_set
    log(f"fu_fast {env['fu_fast']}, torch {env['torch']}, {env['torch_threads']} threads, "
        f"{env['cpu_count']} CPUs; {args.repeats} repetitions per path, interleaved"
        + (" (quick)" if args.quick else ""))
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        log(f"note: load average {load:.1f} before the run on {os.cpu_count()} CPUs: other processes compete"
            + ("; multi-threaded runs stall on every parallel region (compare --threads 1)"
               if torch.get_num_threads() > 1 else ""))
    started = time.perf_counter()
    records = []
    for case in build_cases(args.quick, args.cnn_examples, args.cnn_width, args.mlp_examples,
                            args.batch_size, args.cases):
        records.append(bench_case(case, args.repeats, args.check_examples, log))
    log("")
    print_table(records)
    for r in records:
        if not r["meets_expectation"] and not args.quick:
            log(f"note: {r['case']} ratio {r['ratio']:.1f}x is below the expected {r['expected_ratio']:g}x")
        if not r["repeatable"]:
            log(f"note: {r['case']}: repeated runs of a path gave different counts/curves")
    doc = {"benchmark": "bench_cpu", "quick": args.quick, "repeats": args.repeats, "seed": SEED,
           "environment": env, "cases": records, "seconds": time.perf_counter() - started}
    doc["load_average_after"] = os.getloadavg()
    log(f"total {doc['seconds']:.1f} s; load average before {env['load_average'][0]:.1f}, "
        f"after {doc['load_average_after'][0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, default=_json_default)
        log(f"wrote {args.json}")
    return doc


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj).__name__)


if __name__ == "__main__":
    main()
