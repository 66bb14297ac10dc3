"""GPU benchmark: the naive ablation path against fu-fast on ResNet18, each kernel against
the PyTorch composition it replaces, and every case against its hardware floor.

    python benchmarks/bench_gpu.py                          # the issue's cases, on cuda
    python benchmarks/bench_gpu.py --widths 4 --images 50000   # the whole ImageNet-size run
    python benchmarks/bench_gpu.py --device cpu --quick     # smoke test of the code path (seconds)
    fu-fast bench gpu ...                                   # the same

Everything runs in one process, side by side, and the report is ratios:

* rates: the measured matrix-multiply rate (a large matmul at the analysis precision, and
  in float64 for the covariance) and the measured memory bandwidth (a large copy);
* kernels: masked expansion, label agreement and streaming covariance, each timed against
  the PyTorch composition it replaces (materialised masks and a multiply; argmax, compare,
  sum; gather, float64 matmul), with its floor: the bytes it must move over the measured
  bandwidth (and, for the covariance, its FLOPs over the float64 rate);
* ResNet18 at each width on synthetic images (8 block outputs, 21 levels x 3 repeats,
  redundancy with the 50,000-position cap): the whole fu_fast.analyze on --images images,
  its masked passes alone (the first layer's carries the base forward too), and the naive
  path (one full forward per mask, as the paper's code does) against fu-fast on the first
  --naive-images images. The floor of the analysis is its FLOPs (counted by torch's
  FlopCounterMode on a few images, scaled) over the measured matmul rate; the report gives
  measured / floor for the whole analysis and for the masked passes. On the naive subset it
  also reports how far bfloat16 moves the prunable fractions from float32.

Synthetic images are standard-normal tensors (seeded); the analysis does not care what is in
them, only how many there are. Curves of the naive path and of fu-fast are compared on the
naive subset (float32 convolutions may pick different algorithms for B and K*B rows, so a
rare label flip is possible and is reported, not hidden).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import fu_fast
from fu_fast import kernels, models, reference
from fu_fast.errors import FuFastError
from fu_fast.analysis import masks
from fu_fast.benchmarks.bench_cpu import (LEVELS, MASK_REPEATS, SEED, _masked_pass_timer, patched_passes, _json_default,
                                          compare, naive_masks)


# ----------------------------------------------------------------------------- timing

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 5) -> float:
    """Median seconds of fn() over repeats (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# ----------------------------------------------------------------------------- rates

_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}


def matmul_rate(device: torch.device, precision: str, size: int) -> float:
    """FLOP/s of a size^3 matrix product at the precision (tf32: TF32 tensor cores)."""
    a = torch.randn(size, size, device=device, dtype=_DTYPES[precision])
    b = torch.randn(size, size, device=device, dtype=_DTYPES[precision])
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        seconds = timed(lambda: a @ b, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * size ** 3 / seconds


def bandwidth(device: torch.device, megabytes: int) -> float:
    """Bytes/s of a large device copy (read + write)."""
    src = torch.empty(megabytes << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / timed(lambda: dst.copy_(src), device)


# ----------------------------------------------------------------------------- kernels

def kernel_cases(device: torch.device, quick: bool, rates: dict, log) -> list[dict]:
    """Each kernel against the PyTorch composition it replaces, with its floor."""
    gen = torch.Generator(device="cpu").manual_seed(SEED)
    batch, channels, side = (8, 16, 14) if quick else (64, 256, 28)     # ResNet18-4x layer2-like output
    x = torch.randn(batch, channels, side, side, generator=gen).to(device)
    units = x[0].numel()
    k = 21
    key = masks.mask_key(SEED, "bench", 0)
    thresholds = [masks.threshold(p, units) for p in masks.level_grid(k)]
    keep = ~reference.ablation_masks([key] * k, thresholds, units).to(device)
    cases = []

    def record(name, ours, theirs, bytes_moved, flops=0.0, flop_rate=None):
        floor = max(bytes_moved / rates["bandwidth"], flops / flop_rate if flop_rate else 0.0)
        entry = {"kernel": name, "fu_fast_s": ours, "torch_s": theirs, "speedup": theirs / ours,
                 "floor_s": floor, "measured_over_floor": ours / floor}
        log(f"  {name:<22} fu-fast {ours * 1e3:8.3f} ms  torch {theirs * 1e3:8.3f} ms  "
            f"speedup {entry['speedup']:5.1f}x  measured/floor {entry['measured_over_floor']:5.1f}")
        cases.append(entry)

    element = x.element_size()
    record("expand_masked (K=21)",
           timed(lambda: kernels.expand_masked(x, [key] * k, thresholds, 1), device),
           timed(lambda: (x.reshape(1, batch, units) * keep.reshape(k, 1, units)).reshape(k * batch, channels, side,
                                                                                           side), device),
           (batch + k * batch) * units * element)

    classes = 1000
    logits = torch.randn(k * batch, classes, generator=gen).to(device)
    base = logits[:batch].argmax(1)
    record("label_agreement", timed(lambda: kernels.label_agreement(logits, base, k), device),
           timed(lambda: (logits.argmax(1).view(k, batch) == base).sum(1), device),
           logits.numel() * logits.element_size())

    rows = torch.randperm(batch * side * side, generator=gen)[: batch * side * side // 4].sort().values.to(device)
    state = [torch.zeros(1, dtype=torch.float64, device=device),
             torch.zeros(channels, dtype=torch.float64, device=device),
             torch.zeros(channels, channels, dtype=torch.float64, device=device)]

    def composition():
        samples = reference.gather_rows(x, rows).double()
        centred = samples - samples.mean(0)
        return centred.T @ centred

    record("covariance_accumulate", timed(lambda: kernels.covariance_accumulate(x, rows, *state), device),
           timed(composition, device), rows.numel() * channels * element,
           flops=rows.numel() * channels * (channels + 1), flop_rate=rates["matmul_fp64"])
    return cases


# ----------------------------------------------------------------------------- ResNet18

def images(count: int, side: int, seed: int, device: torch.device) -> torch.Tensor:
    """Synthetic images, in pinned host memory when the analysis runs on a GPU (as a real
    data loader would hand them over)."""
    out = torch.randn(count, 3, side, side, generator=torch.Generator().manual_seed(seed))
    return out.pin_memory() if device.type == "cuda" else out


def analysis_flops(model, data, settings: dict) -> tuple[float, float]:
    """(all FLOPs, FLOPs of the masked suffix passes) of an analysis of ``data``."""
    suffix = [0.0]
    counter = FlopCounterMode(display=False)

    def counted(original):
        def run(*args, **kwargs):
            with FlopCounterMode(display=False) as inner:
                out = original(*args, **kwargs)
            suffix[0] += inner.get_total_flops()
            return out
        return run

    with patched_passes(counted), counter:
        fu_fast.analyze(model, data, **settings)
    return float(counter.get_total_flops()), suffix[0]


def resnet_case(width: float, args, device: torch.device, rates: dict, log) -> dict:
    torch.manual_seed(SEED)
    model = models.build("resnet18", width).to(device).eval()
    layers = list(model.analysis_layers)
    data = images(args.images, args.image_size, SEED, device)
    settings = dict(layers=layers, repeats=MASK_REPEATS, levels=LEVELS, seed=SEED, sample_cap=args.sample_cap,
                    batch_size=args.batch_size, device=device, precision=args.precision,
                    channels_last=args.channels_last)
    log(f"\n[resnet18 x{width:g}] {models.parameter_count(model):,} parameters, {args.images} images "
        f"{args.image_size}x{args.image_size}, batch {args.batch_size}, {args.precision}"
        + (", channels_last" if args.channels_last else ""))

    fu_fast.analyze(model, data[: min(args.batch_size, args.images)], **settings)      # warm-up
    suffix_times: list[float] = []
    _sync(device)
    with _masked_pass_timer(suffix_times):
        start = time.perf_counter()
        result = fu_fast.analyze(model, data, **settings)
        _sync(device)
        seconds = time.perf_counter() - start
    log(f"  fu-fast, all {args.images} images: {seconds:.2f} s ({args.images / seconds:.0f} images/s)")

    # The FLOP floor, counted on a few images and scaled (FLOPs are linear in the images).
    few = min(args.flop_images, args.images)
    flops, suffix_flops = analysis_flops(model, data[:few], settings)
    scale = args.images / few
    floor = flops * scale / rates["matmul"]
    suffix_floor = suffix_flops * scale / rates["matmul"]
    # The suffix passes were timed with the GPU running ahead of the host: time them again
    # synchronised, on the naive subset, for an honest per-pass figure.
    naive_data = data[: args.naive_images]
    suffix_sync: list[float] = []

    def synced(original):
        def run(*a, **kw):
            _sync(device)
            t0 = time.perf_counter()
            out = original(*a, **kw)
            _sync(device)
            suffix_sync.append(time.perf_counter() - t0)
            return out
        return run

    with patched_passes(synced):
        start = time.perf_counter()
        subset_result = fu_fast.analyze(model, naive_data, **settings)
        _sync(device)
        subset_seconds = time.perf_counter() - start
    subset_suffix_flops = analysis_flops(model, naive_data, settings)[1] if args.naive_images != few else suffix_flops
    suffix_over_floor = sum(suffix_sync) / (subset_suffix_flops / rates["matmul"])

    # The naive path on the same subset: one full forward per mask and batch.
    modules = dict(model.named_modules())
    batches = [naive_data[s:s + args.batch_size].to(device) for s in range(0, len(naive_data), args.batch_size)]
    if args.channels_last:
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    naive_counts = {}
    _sync(device)
    start = time.perf_counter()
    for name in layers:
        units = result.layers[name].ablation_units
        keys, thresholds = naive_masks(name, units)
        naive_counts[name] = reference.naive_ablation_counts(model, modules[name], batches, keys, thresholds, 1)
    _sync(device)
    naive_seconds = time.perf_counter() - start
    agreement = compare(naive_counts, subset_result, len(naive_data))
    shift = precision_shift(model, naive_data, settings)
    record = {
        "width": width, "parameters": models.parameter_count(model), "images": args.images,
        "seconds": seconds, "images_per_second": args.images / seconds,
        "flops": flops * scale, "floor_s": floor, "measured_over_floor": seconds / floor,
        "suffix_s_unsynchronised": sum(suffix_times), "suffix_flops": suffix_flops * scale,
        "suffix_floor_s": suffix_floor, "suffix_measured_over_floor": suffix_over_floor,
        "naive_images": len(naive_data), "naive_s": naive_seconds, "fu_fast_subset_s": subset_seconds,
        "speedup_over_naive": naive_seconds / subset_seconds, "curve_mismatches": agreement["mismatches"],
        "curve_points": agreement["points"], "max_curve_diff": agreement["max_abs_diff"],
        "prunable_fraction": {n: r.prunable_fraction for n, r in result.layers.items()},
        "redundant_units": {n: r.redundant_units for n, r in result.layers.items()},
        "bf16_prunable_shift": shift,
    }
    log(f"  floor {floor:.2f} s ({flops * scale / 1e12:.1f} TFLOP at {rates['matmul'] / 1e12:.1f} TFLOP/s): "
        f"measured/floor {record['measured_over_floor']:.2f}; suffix passes measured/floor {suffix_over_floor:.2f}")
    log(f"  naive vs fu-fast on {len(naive_data)} images: {naive_seconds:.2f} s vs {subset_seconds:.2f} s = "
        f"{record['speedup_over_naive']:.1f}x; curve points differing {agreement['mismatches']}/{agreement['points']}")
    log(f"  bf16 vs fp32 on {len(naive_data)} images: prunable fractions move by at most "
        f"{shift['max_abs_shift']:.4f} (mean {shift['mean_abs_shift']:.4f}) over the 8 layers")
    return record


def precision_shift(model, data, settings: dict) -> dict:
    """How far bfloat16 moves each layer's prunable fraction from float32 (same data, masks)."""
    fractions = {}
    for precision in ("fp32", "bf16"):
        result = fu_fast.analyze(model, data, **{**settings, "precision": precision})
        fractions[precision] = {n: r.prunable_fraction for n, r in result.layers.items()}
    shifts = [abs(fractions["bf16"][n] - fractions["fp32"][n]) for n in fractions["fp32"]]
    return {"fp32": fractions["fp32"], "bf16": fractions["bf16"], "max_abs_shift": max(shifts),
            "mean_abs_shift": float(np.mean(shifts))}


# ----------------------------------------------------------------------------- driver

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (cpu: a smoke test of the code path)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: seconds, for tests")
    p.add_argument("--widths", type=float, nargs="+", default=None, help="ResNet18 widths (default 1 4)")
    p.add_argument("--images", type=int, default=None, help="synthetic images analysed (default 5000)")
    p.add_argument("--image-size", type=int, default=None, help="image side (default 224)")
    p.add_argument("--naive-images", type=int, default=None,
                   help="images of the naive-vs-fu-fast comparison (default 256)")
    p.add_argument("--flop-images", type=int, default=None, help="images the FLOPs are counted on (default 4)")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default 128)")
    p.add_argument("--sample-cap", type=int, default=50_000, help="positions per layer for redundancy")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory for the convolutions")
    p.add_argument("--skip-kernels", action="store_true", help="only the ResNet18 cases")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    quick = {"widths": [0.25], "images": 8, "image_size": 32, "naive_images": 2, "flop_images": 2, "batch_size": 4}
    full = {"widths": [1.0, 4.0], "images": 5000, "image_size": 224, "naive_images": 256, "flop_images": 4,
            "batch_size": 128}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.images, args.naive_images, args.flop_images, args.batch_size) < 1:
        p.error("--images, --naive-images, --flop-images and --batch-size must be positive")
    args.naive_images = min(args.naive_images, args.images)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FuFastError("no usable CUDA device (use --device cpu for a smoke test of the code path)")
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    info = fu_fast.build_info()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    log(f"fu_fast {fu_fast.__version__} (kernels: {kernels.kernels_for(device)}), torch {torch.__version__}, "
        f"device {name}")
    big = 1024 if args.quick or device.type == "cpu" else 8192
    rates = {"matmul": matmul_rate(device, args.precision, big),
             "matmul_fp64": matmul_rate(device, "fp64", big // 2),
             "bandwidth": bandwidth(device, 64 if args.quick or device.type == "cpu" else 2048)}
    log(f"measured: matmul {rates['matmul'] / 1e12:.2f} TFLOP/s ({args.precision}), "
        f"{rates['matmul_fp64'] / 1e12:.2f} TFLOP/s (fp64); bandwidth {rates['bandwidth'] / 1e9:.0f} GB/s")
    doc = {"benchmark": "bench_gpu", "date": datetime.date.today().isoformat(), "device": name,
           "torch": torch.__version__, "fu_fast": fu_fast.__version__, "gpu_backend": kernels.kernels_for(device),
           "cuda_runtime": info.get("cuda_runtime_version"), "settings": vars(args), "rates": rates}
    if not args.skip_kernels:
        log("\nkernels (median of 5), against the PyTorch composition they replace:")
        doc["kernels"] = kernel_cases(device, args.quick, rates, log)
    doc["resnet18"] = [resnet_case(width, args, device, rates, log) for width in args.widths]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, default=_json_default)
        log(f"wrote {args.json}")
    return doc


if __name__ == "__main__":
    try:
        main()
    except FuFastError as e:
        raise SystemExit(f"error: {e}") from None
