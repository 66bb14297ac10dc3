"""Bad command lines: every option of every command with bad values, output paths that cannot
be written, options that contradict a checkpoint. Each must end with one `error:` line on
stderr, exit code 2, and nothing written."""

import tempfile

import pytest
import torch
from typer.testing import CliRunner

import fu_fast
from fu_fast.cli import app as cli_app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli_app.app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "mlp"
    result = invoke("train", "--model", "mlp", "--width", "0.25", "--epochs", "1", "--out", run, "--quiet")
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def places(tmp_path, trained_run):
    """Names the table's command lines use: a file, a directory, the trained run."""
    (tmp_path / "a_file").write_text("not a directory")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "a_dir").mkdir()
    return {"FILE": tmp_path / "a_file", "EMPTY": tmp_path / "empty", "DIR": tmp_path / "a_dir",
            "UNDER_FILE": tmp_path / "a_file" / "x", "RUN": trained_run, "NEW": tmp_path / "new"}


ANALYZE = ("analyze", "--model", "mlp", "--width", "0.25", "--limit", "50", "-q")
TRAIN = ("train", "--model", "mlp", "--width", "0.25", "--epochs", "1", "-q")

# (command line with names from `places`, fragments the one error line must hold)
BAD_COMMAND_LINES = [
    # option values Typer cannot parse: one line, not a usage box
    (("analyze", "--width", "abc"), ["--width", "valid number"]),
    (("analyze", "--model", "mlp", "--levels", "abc"), ["--levels"]),
    (("analyze", "--model", "mlp", "--unit", "foo"), ["--unit", "foo"]),
    (("analyze", "--model", "mlp", "--precision", "fp8"), ["--precision"]),
    (("train", "--model", "mlp", "--epochs", "x", "--out", "NEW"), ["--epochs"]),
    (("train", "--out", "NEW"), ["Missing option", "--model"]),
    (("sweep", "--preset", "mlp-synthetic-10d", "--out", "NEW", "--trials", "many"), ["--trials"]),
    (("report",), ["Missing argument"]),
    (("nosuch",), ["No such command"]),
    (("analyze", "--model", "mlp", "--no-such-option"), ["No such option"]),
    # values that parse but make no sense
    (ANALYZE + ("--batch-size", "0"), ["--batch-size must be positive"]),
    (ANALYZE + ("--batch-size", "-1"), ["--batch-size must be positive"]),
    (ANALYZE + ("--workers", "-1"), ["--workers"]),
    (ANALYZE + ("--layers", "1", "--layers", "1"), ["layer '1' is named more than once"]),
    (ANALYZE + ("--levels", "1"), ["levels"]),
    (ANALYZE + ("--repeats", "0"), ["repeats"]),
    (ANALYZE + ("--tolerance", "1.5"), ["tolerance"]),
    (ANALYZE + ("--device", "nonsense"), ["unknown device"]),
    (TRAIN + ("--batch-size", "0", "--out", "NEW"), ["batch size must be a positive integer"]),
    (TRAIN + ("--batch-size", "-4", "--out", "NEW"), ["batch size must be a positive integer"]),
    (("compress", "--checkpoint", "RUN", "--out", "NEW", "--device", "nonsense"), ["unknown device"]),
    # flags that contradict the checkpoint would be ignored
    (("analyze", "--checkpoint", "RUN", "--input-dim", "7", "-q"), ["--input-dim 7 contradicts", "input_dim 10"]),
    (("analyze", "--checkpoint", "RUN", "--image-size", "32", "-q"), ["--image-size 32 contradicts"]),
    # output paths, checked before any work
    (ANALYZE + ("--out", "DIR"), ["is a directory"]),
    (ANALYZE + ("--out", "UNDER_FILE"), ["is not a directory"]),
    (TRAIN + ("--out", "FILE"), ["exists and is not a directory"]),
    (TRAIN + ("--out", "UNDER_FILE"), ["is not a directory"]),
    (("sweep", "--preset", "mlp-synthetic-10d", "--out", "FILE"), ["exists and is not a directory"]),
    (("compress", "--checkpoint", "RUN", "--out", "FILE"), ["exists and is not a directory"]),
    (("visualize", "--model", "alexnet", "--thin-width", "0.25", "--wide-width", "0.5", "--out", "UNDER_FILE"),
     ["is not a directory"]),
    # targeted orders and noise levels, checked before a model is built
    (ANALYZE + ("--orders", "size"), ["unknown order 'size'"]),
    (ANALYZE + ("--noise-levels", "0,x"), ["--noise-levels takes comma-separated numbers"]),
    (ANALYZE + ("--noise-levels", ""), ["--noise-levels takes comma-separated numbers"]),
    (ANALYZE + ("--noise-levels", "1,2"), ["noise_levels must start at 0"]),
    # models by name and their weight files (read weights-only)
    (("analyze", "--model", "torchvision:nosuch", "-q"), ["unknown torchvision classification model 'nosuch'"]),
    (("analyze", "--model", "torchvision:resnet18", "--weights", "FILE", "-q"),
     ["cannot read weights file", "not a PyTorch checkpoint"]),
    (("analyze", "--model", "torchvision:resnet18", "--weights", "EMPTY", "-q"), ["it is empty (0 bytes)"]),
    (("analyze", "--model", "torchvision:resnet18", "--weights", "NEW", "-q"), ["does not exist"]),
    (("analyze", "--model", "torchvision:resnet18", "--weights", "DIR", "-q"), ["is a directory"]),
    (("analyze", "--model", "torchvision:resnet18", "--num-classes", "1", "-q"), ["num_classes", "at least 2"]),
    # --download fetches CIFAR-10 only, into a --data-dir
    (ANALYZE + ("--download",), ["--download fetches cifar10 only"]),
    (("analyze", "--model", "mlp", "--data", "digits", "--download", "-q"), ["--download fetches cifar10 only",
                                                                              "digits"]),
    (("analyze", "--model", "alexnet", "--data", "cifar10", "--download", "-q"), ["--download needs --data-dir"]),
    (("train", "--model", "alexnet", "--width", "0.25", "--data", "cifar10", "--download", "--out", "NEW", "-q"),
     ["--download needs --data-dir"]),
    (TRAIN + ("--download", "--out", "NEW"), ["--download fetches cifar10 only"]),
    (("analyze", "--model", "mlp", "--download=maybe"), ["--download"]),
    (("analyze", "--model", "torchvision:resnet18", "--width", "2", "-q"), ["--width scales the zoo models"]),
    (("analyze", "--model", "nosuchpkg.mod:factory", "-q"), ["nosuchpkg.mod:factory: no module named"]),
    (("analyze", "--model", "mlp", "--weights", "FILE", "-q"), ["--weights loads a state dict into"]),
    (("analyze", "--checkpoint", "FILE", "-q"), ["cannot read checkpoint", "not a PyTorch checkpoint"]),
    (("analyze", "--checkpoint", "EMPTY", "-q"), ["it is empty (0 bytes)"]),
    (("analyze", "--model", "mlp", "--data", "cifar10", "--data-dir", "DIR", "-q"),
     ["no cifar-10-batches-py", "fu-fast data cifar10 DIR"]),
    # fu-fast map: checkpoints, layers and settings
    (("map", "FILE", "RUN", "--out", "NEW"), ["THIN: cannot read checkpoint", "not a PyTorch checkpoint"]),
    (("map", "RUN", "--out", "NEW"), ["say what to map"]),
    (("map", "RUN", "NEW", "--out", "DIR"), ["WIDE: checkpoint", "does not exist"]),
    (("map", "RUN", "RUN", "--out", "UNDER_FILE"), ["is not a directory"]),
    (("map", "RUN", "RUN", "--out", "NEW", "--layers", "a=b=c"), ["--layers 'a=b=c'"]),
    (("map", "RUN", "RUN", "--out", "NEW", "--ridge", "-1"), ["ridge must be a positive number"]),
    (("map", "RUN", "RUN", "--out", "NEW", "--sample-cap", "1"), ["sample_cap must be an integer of at least 2"]),
    (("map", "RUN", "RUN", "--out", "NEW", "--limit", "0"), ["--limit must be a positive number"]),
    # fu-fast data, epoch checkpoints, report and sweep files
    (("data", "cifar10", "FILE"), ["exists and is not a directory"]),
    (("data", "nosuch", "NEW"), ["unknown data set 'nosuch'"]),
    (TRAIN + ("--out", "NEW", "--save-epochs", "x"), ["--save-epochs must be epochs separated by commas"]),
    (TRAIN + ("--out", "NEW", "--save-every", "0"), ["save_every", "must be a positive integer"]),
    (TRAIN + ("--out", "NEW", "--save-epochs", "5"), ["save epoch 5 lies past the last epoch"]),
    (("report", "DIR"), ["sweep.json not found"]),
    (("report", "FILE"), ["is a file, not a sweep directory"]),
    (("sweep", "FILE", "--out", "NEW"), ["is not valid TOML"]),
    (("sweep", "EMPTY", "--out", "NEW"), ["models must be a non-empty list"]),
]


@pytest.mark.parametrize("line, fragments", BAD_COMMAND_LINES,
                         ids=lambda v: " ".join(v) if isinstance(v, tuple) else None)
def test_bad_command_lines_end_in_one_error_line(line, fragments, places, tmp_path):
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = invoke(*[places.get(word, word) for word in line])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before    # nothing written


def test_an_output_folder_without_write_permission_is_refused_before_work(tmp_path, monkeypatch):
    """Root may write anywhere, so the refusal is simulated where the check asks the file system."""
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    analysed = []
    monkeypatch.setattr(fu_fast, "analyze", lambda *a, **k: analysed.append(1))
    for line in (ANALYZE + ("--out", tmp_path / "r.json"), TRAIN + ("--out", tmp_path / "run"),
                 ("sweep", "--preset", "mlp-synthetic-10d", "--out", tmp_path / "sweep")):
        result = invoke(*line)
        assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
            f"error: cannot write {line[-1]}: {tmp_path}: Permission denied"], result.stderr
    assert not analysed and not list(tmp_path.iterdir())


def test_help_is_unchanged():
    result = invoke("analyze", "--help")
    assert result.exit_code == 0 and "--batch-size" in result.stdout


@pytest.mark.parametrize("command, module, function, message", [
    (TRAIN + ("--out", "NEW"), "fu_fast.train", "train", "interrupted; run the same command again to resume"),
    (("sweep", "--preset", "mlp-synthetic-10d", "--out", "NEW"), "fu_fast.sweep", "run_sweep",
     "interrupted; run the same command again to resume"),
    (ANALYZE, "fu_fast", "analyze", "interrupted"),
])
def test_ctrl_c_says_so_and_whether_a_rerun_resumes(command, module, function, message, places, monkeypatch):
    import importlib

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), function, interrupted)
    result = invoke(*[places.get(word, word) for word in command])
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines() == [message]


def test_an_error_after_the_progress_bar_started_is_the_only_line(monkeypatch):
    def fails_halfway(*args, progress=None, **kwargs):
        progress(10, 50)
        raise fu_fast.FuFastError("layer '1' produced NaN or infinite activations")

    monkeypatch.setattr(fu_fast, "analyze", fails_halfway)
    result = invoke("analyze", "--model", "mlp", "--width", "0.25", "--limit", "50")
    assert result.exit_code == 2
    assert result.stderr == "error: layer '1' produced NaN or infinite activations\n"


def test_a_dead_layer_prints_as_dead(tmp_path, monkeypatch):
    """A layer whose units never vary has no correlations: the table says so instead of failing."""
    real = fu_fast.analyze

    def with_a_dead_layer(model, *args, **kwargs):
        with torch.no_grad():
            model.fc1.bias.fill_(-1e6)        # relu1 never fires
        return real(model, *args, **kwargs)

    monkeypatch.setattr(fu_fast, "analyze", with_a_dead_layer)
    out = tmp_path / "r.json"
    result = invoke("analyze", "--model", "mlp", "--width", "0.25", "--limit", "50", "--out", out)
    assert result.exit_code == 0, result.output
    assert "dead" in result.stdout and out.exists()


def _typed_options():
    """(command, option, kind) for every number and choice option of every command, read from the
    commands' own signatures, so that an option added later is covered without a new table row."""
    import enum
    import inspect
    import typing

    for command in cli_app.typer.main.get_command(cli_app.app).commands.values():
        if command.name == "bench":   # its options belong to the benchmark scripts (argparse)
            continue
        hints = typing.get_type_hints(command.callback.__wrapped__)
        for name, parameter in inspect.signature(command.callback.__wrapped__).parameters.items():
            kind = hints[name]
            kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)   # Optional[X] -> X
            option = getattr(parameter.default, "param_decls", None) or ("--" + name.replace("_", "-"),)
            flag = next((d for d in option if d.startswith("--")), None)
            if flag is None or kind is bool:
                continue
            if kind in (int, float) or (isinstance(kind, type) and issubclass(kind, enum.Enum)):
                yield command.name, flag, kind


TYPED_OPTIONS = list(_typed_options())


def test_every_number_and_choice_option_is_walked():
    assert len(TYPED_OPTIONS) >= 40 and ("analyze", "--levels", int) in TYPED_OPTIONS


@pytest.mark.parametrize("command, flag, kind", TYPED_OPTIONS, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("value", ["abc", ""])
def test_a_value_of_the_wrong_type_is_one_error_line(command, flag, kind, value, tmp_path):
    result = invoke(command, flag, value, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command, flag", sorted({(c, f) for c, f, _ in TYPED_OPTIONS}))
def test_an_option_without_its_value_is_one_error_line(command, flag):
    result = invoke(command, flag)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], result.stderr
