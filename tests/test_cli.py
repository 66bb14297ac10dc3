"""The fu-fast command line through Typer's test runner: happy paths and user errors."""

import json

import pytest
import torch
from typer.testing import CliRunner

from fu_fast.cli.app import app

from conftest import one_error_line, write_cifar10

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_info_lists_the_build():
    result = invoke("info")
    assert result.exit_code == 0
    assert "backends" in result.stdout and "cpu" in result.stdout and "gpu_usable" in result.stdout


def test_info_check_runs_the_cpu_checks_and_says_why_no_gpu_was_checked():
    result = invoke("info", "--check")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    checks = [line for line in lines if line.startswith(("ok", "FAIL"))]
    assert len(checks) == 5 and all(line.startswith("ok    cpu") for line in checks), result.stdout
    if not torch.cuda.is_available():
        assert lines[-1].startswith("verdict: all 5 checks passed (cpu only; no GPU was usable: "), lines[-1]


def test_info_check_fails_on_a_kernel_that_differs_from_its_reference(monkeypatch):
    from fu_fast import kernels

    real = kernels.label_agreement

    def off_by_one(logits, base, masks, **kwargs):
        return real(logits, base, masks, **kwargs) + (logits.shape[1] == 37)

    monkeypatch.setattr(kernels, "label_agreement", off_by_one)
    result = invoke("info", "--check")
    assert result.exit_code == 1
    assert "FAIL  cpu     label agreement vs reference: Mismatch: (10, 37) torch.float32" in result.stdout
    assert "verdict: 1 of 5 checks FAILED" in result.stdout


def test_train_then_analyze_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    result = invoke("train", "--model", "mlp", "--width", "0.5", "--epochs", "2", "--out", run, "--quiet")
    assert result.exit_code == 0, result.output
    assert "epoch 2" in result.stderr and (run / "model.pt").exists()
    out = tmp_path / "analysis.json"
    result = invoke("analyze", "--checkpoint", run, "--out", out, "--repeats", "2")
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["model"]["name"] == "mlp" and document["model"]["width"] == 0.5
    assert document["model"]["options"]["input_dim"] == 10
    assert document["data"]["name"] == "synthetic" and document["data"]["split"] == "test"
    assert document["data"]["examples"] == 1000 and document["settings"]["repeats"] == 2
    assert [layer["name"] for layer in document["layers"]] == ["relu1"]
    assert document["layers"][0]["units"] == 64
    assert 0.0 <= document["model"]["accuracy"] <= 1.0
    assert "relu1" in result.stdout   # the per-layer table


def test_analyze_an_untrained_conv_model_on_cifar(tmp_path):
    write_cifar10(tmp_path / "cifar", per_batch=8)
    out = tmp_path / "a.json"
    result = invoke("analyze", "--model", "alexnet", "--width", "0.125", "--data", "cifar10", "--data-dir",
                    tmp_path / "cifar", "--limit", "6", "--levels", "5", "--repeats", "1", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["data"]["examples"] == 6
    assert [layer["kind"] for layer in document["layers"]] == ["conv", "conv", "linear", "linear"]
    assert result.stdout == ""
    # The same analysis on NHWC memory gives the same document; bf16 is recorded as such.
    nhwc = tmp_path / "nhwc.json"
    assert invoke("analyze", "--model", "alexnet", "--width", "0.125", "--data", "cifar10", "--data-dir",
                  tmp_path / "cifar", "--limit", "6", "--levels", "5", "--repeats", "1", "--channels-last",
                  "--workers", "1", "--out", nhwc, "-q").exit_code == 0
    nhwc_document = json.loads(nhwc.read_text())
    assert [layer["prunability"] for layer in nhwc_document["layers"]] == \
        [layer["prunability"] for layer in document["layers"]]
    bf16 = tmp_path / "bf16.json"
    assert invoke("analyze", "--model", "alexnet", "--width", "0.125", "--data", "cifar10", "--data-dir",
                  tmp_path / "cifar", "--limit", "6", "--levels", "5", "--repeats", "1", "--precision", "bf16",
                  "--out", bf16, "-q").exit_code == 0
    assert json.loads(bf16.read_text())["settings"]["precision"] == "bf16"


@pytest.mark.parametrize("args, fragments", [
    (["analyze", "--model", "vgg"], ["unknown model", "vgg"]),
    (["analyze", "--model", "alexnet", "--data", "cifar10", "--data-dir", "{tmp}/none"], ["cifar-10-batches-py"]),
    (["analyze", "--model", "mlp", "--width", "-1"], ["width"]),
    (["analyze", "--model", "mlp", "--layers", "fc9"], ["fc9"]),
    (["analyze", "--checkpoint", "{tmp}/missing.pt"], ["does not exist"]),
    (["analyze", "--model", "mlp", "--limit", "0"], ["limit must"]),
    (["analyze", "--model", "mlp", "--workers", "-2"], ["--workers"]),
    (["train", "--model", "mlp", "--out", "{tmp}/r", "--lr", "-1"], ["learning rate"]),
    (["train", "--model", "alexnet", "--out", "{tmp}/r", "--data-dir", "{tmp}/none"], ["cifar-10-batches-py"]),
])
def test_user_errors_are_one_line_and_leave_no_result(tmp_path, args, fragments):
    out = tmp_path / "out.json"
    result = invoke(*[a.replace("{tmp}", str(tmp_path)) for a in args],
                    *(["--out", out] if args[0] == "analyze" else []))
    one_error_line(result, *fragments)
    assert not out.exists()


def test_a_mismatched_checkpoint_is_one_line(tmp_path):
    invoke("train", "--model", "mlp", "--width", "0.25", "--epochs", "1", "--out", tmp_path / "run", "-q")
    one_error_line(invoke("analyze", "--checkpoint", tmp_path / "run", "--width", "4"), "width 0.25, not 4")
    one_error_line(invoke("analyze", "--checkpoint", tmp_path / "run", "--model", "resnet18"), "not 'resnet18'")


def test_a_layer_inside_a_residual_block_is_analysed_from_the_block_input(tmp_path):
    """Inside a residual block the shortcut bypasses bn1: its masked copies begin at the block's
    input (the stem's output), and the document says so."""
    write_cifar10(tmp_path / "cifar", per_batch=4)
    out = tmp_path / "out.json"
    result = invoke("analyze", "--model", "resnet56", "--width", "0.25", "--data", "cifar10", "--data-dir",
                    tmp_path / "cifar", "--limit", "4", "--layers", "layer1.0.bn1", "--levels", "3", "--repeats", "1",
                    "--out", out, "-q")
    assert result.exit_code == 0, result.output
    layer = json.loads(out.read_text())["layers"][0]
    assert layer["name"] == "layer1.0.bn1" and layer["expanded_at"] not in (None, "layer1.0.bn1")


SWEEP = """
models = ["mlp"]
widths = [0.5, 4]
[train]
epochs = 1
[analyze]
repeats = 1
limit = 100
"""


def test_sweep_then_report(tmp_path):
    config = tmp_path / "s.toml"
    config.write_text(SWEEP)
    result = invoke("sweep", config, "--out", tmp_path / "sweep")
    assert result.exit_code == 0, result.output
    assert "2/2" in result.stderr   # the progress bar's last state
    report = tmp_path / "sweep" / "report"
    assert (report / "summary.md").exists() and (report / "report.json").exists()
    assert "| 4" in result.stdout   # the summary table was printed
    # Again: members are skipped, the report is rewritten.
    (report / "summary.md").unlink()
    result = invoke("report", tmp_path / "sweep", "-q")
    assert result.exit_code == 0 and (report / "summary.md").exists() and result.stdout == ""


def test_sweep_shard_leaves_the_report_for_later(tmp_path):
    config = tmp_path / "s.toml"
    config.write_text(SWEEP)
    result = invoke("sweep", config, "--out", tmp_path / "sweep", "--shard", "0/2", "-q")
    assert result.exit_code == 0, result.output
    assert "1/2 members done" in result.stderr and not (tmp_path / "sweep" / "report").exists()


@pytest.mark.parametrize("args, fragments", [
    (["sweep", "{tmp}/missing.toml", "--out", "{tmp}/s"], ["cannot read sweep configuration"]),
    (["sweep", "--preset", "alexnet-cifar-init", "--out", "{tmp}/s", "--data-dir", "{tmp}/none"],
     ["cifar-10-batches-py"]),
    (["sweep", "--preset", "nope", "--out", "{tmp}/s"], ["unknown preset"]),
    (["sweep", "--preset", "mlp-synthetic", "--out", "{tmp}/s", "--shard", "3/2"], ["shard"]),
    (["report", "{tmp}"], ["sweep.json"]),
    (["bench", "tpu"], ["unknown benchmark"]),
])
def test_sweep_report_bench_user_errors(tmp_path, args, fragments):
    one_error_line(invoke(*[a.replace("{tmp}", str(tmp_path)) for a in args]), *fragments)
    assert not (tmp_path / "s" / "report").exists()


def test_bench_runs_the_quick_cpu_benchmark(tmp_path):
    result = invoke("bench", "cpu", "--quick", "--cases", "mlp", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b.json").read_text())["cases"][0]["case"] == "mlp"


def test_analyze_under_torchrun_equals_one_process(tmp_path):
    """Two gloo processes each analyse half the data; the document equals one process's."""
    import os
    import subprocess
    import sys

    args = ["analyze", "--model", "mlp", "--width", "0.5", "--limit", "301", "--device", "cpu", "-q"]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "fu_fast.cli", *args, "--out", str(tmp_path / "two.json")], cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert invoke(*args, "--out", tmp_path / "one.json").exit_code == 0
    two, one = (json.loads((tmp_path / f).read_text()) for f in ("two.json", "one.json"))
    assert two["data"]["examples"] == one["data"]["examples"] == 301
    assert two["layers"][0]["prunability"] == one["layers"][0]["prunability"]
    assert two["layers"][0]["redundancy"]["components"] == one["layers"][0]["redundancy"]["components"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_benchmark_without_a_gpu_is_a_clear_error():
    result = invoke("bench", "gpu")
    assert result.exit_code == 2 and "no usable CUDA device" in result.stderr



def test_the_command_line_starts_without_torch():
    """`fu-fast --help` and every command's help answer at once: the command line's modules and the
    package's top level import torch (1.5 s and more) only inside the commands that use it."""
    import subprocess
    import sys

    probe = ("import sys, fu_fast, fu_fast.cli.app; "
             "from fu_fast.cli.app import app; from typer.testing import CliRunner; "
             "assert CliRunner().invoke(app, ['analyze', '--help']).exit_code == 0; "
             "print(sorted(m for m in ('torch', 'torchvision', 'numpy', 'matplotlib') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd="/")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
