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
