"""The CPU benchmark runs (quick sizes) and its naive path reproduces the engine's curves.

Timings are reported by the benchmark, never asserted here."""

from fu_fast.benchmarks import bench_cpu


def test_quick_benchmark_agrees_with_the_engine(tmp_path):
    doc = bench_cpu.main(["--quick", "--json", str(tmp_path / "bench.json")])
    assert (tmp_path / "bench.json").stat().st_size > 0
    assert {c["case"] for c in doc["cases"]} == {"mlp", "cnn"}
    for case in doc["cases"]:
        for check in ("agreement_fp32", "agreement_fp64"):
            assert case[check]["points"] > 0 and case[check]["mismatches"] == 0
        assert case["ratio"] > 0 and case["masks_per_layer_naive"] == 63


def test_gpu_benchmark_code_path_runs_on_the_cpu(tmp_path):
    """bench_gpu on the CPU at quick sizes: every case runs, floors are positive, and the naive
    path reproduces fu-fast's curves on its subset."""
    from fu_fast.benchmarks import bench_gpu

    doc = bench_gpu.main(["--device", "cpu", "--quick", "--json", str(tmp_path / "gpu.json")])
    assert (tmp_path / "gpu.json").stat().st_size > 0
    assert [k["kernel"] for k in doc["kernels"]] == ["expand_masked (K=21)", "label_agreement",
                                                     "covariance_accumulate"]
    assert all(k["floor_s"] > 0 and k["measured_over_floor"] > 0 for k in doc["kernels"])
    (case,) = doc["resnet18"]
    assert case["curve_points"] == 8 * 63 and case["curve_mismatches"] == 0
    assert case["flops"] > case["suffix_flops"] > 0 and case["measured_over_floor"] > 0
    assert case["bf16_prunable_shift"]["max_abs_shift"] >= case["bf16_prunable_shift"]["mean_abs_shift"] >= 0
    assert set(case["prunable_fraction"]) == {f"layer{s}.{b}" for s in range(1, 5) for b in range(2)}


def test_gpu_check_script_runs_every_step_and_reports_each(tmp_path):
    """benchmarks/gpu_check.sh with its commands replaced by stand-ins (no GPU here): every step
    runs even after one fails, summary.md has one row per step and each step's output, and the
    exit status is the first failure's."""
    import os
    import stat
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.sh"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    stand_ins = {"pip": 'echo "pip $*"', "pytest": 'echo "pytest $*"; exit 5',
                 "nvidia-smi": 'echo "NVIDIA H100, 570.00, 81559 MiB"',
                 "fu-fast": 'echo "fu-fast $*"; [ "$1" = bench ] && exit 3; exit 0'}
    for name, body in stand_ins.items():
        path = fake_bin / name
        path.write_text(f"#!/usr/bin/env bash\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "OUT": str(out)})
    assert run.returncode == 5, run.stdout + run.stderr          # pytest failed first
    summary = (out / "summary.md").read_text()
    for row in ("| build | 0 |", "| info-check | 0 |", "| pytest-cuda | 5 |", "| bench-gpu | 3 |"):
        assert row in summary, summary
    assert "NVIDIA H100" in summary and "fu-fast info --check" in summary
    assert "fu-fast bench gpu --widths 1 4 --images 1000 --naive-images 64 --json" in summary
    assert sorted(p.name for p in out.iterdir()) == ["bench-gpu.txt", "build.txt", "info-check.txt",
                                                     "pytest-cuda.txt", "summary.md"]
