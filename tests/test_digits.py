"""scikit-learn's digits (fu_fast.data.digits): the fixed stratified split, shapes for MLPs and conv
nets, train-split standardisation, the line without scikit-learn, and the commands on it."""

import json
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fu_fast import FuFastError, data
from fu_fast.cli.app import app
from fu_fast.data import digits

from conftest import one_error_line

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def sklearn():
    """Skips a test that reads the digits when scikit-learn is not installed (the optional extra)."""
    return pytest.importorskip("sklearn", reason="digits data needs scikit-learn (pip install 'fu-fast[digits]')")


@pytest.fixture(scope="module")
def raw(sklearn):
    return digits.raw()


# ---------------------------------------------------------------- the split

def test_split_is_stratified_disjoint_complete_and_fixed(raw):
    _, labels = raw
    indices = digits.split_indices(labels)
    sizes = {split: len(idx) for split, idx in indices.items()}
    assert sizes == {"train": 1079, "val": 359, "test": 359} and sum(sizes.values()) == digits.EXAMPLES
    union = np.concatenate(list(indices.values()))
    assert len(np.unique(union)) == digits.EXAMPLES                      # disjoint and complete
    per_class = np.bincount(labels, minlength=10)
    for split, share in (("test", 0.2), ("val", 0.2), ("train", 0.6)):
        counts = np.bincount(labels[indices[split]], minlength=10)
        assert np.all(np.abs(counts - share * per_class) <= 1), (split, counts)   # every class, its share
    # The same indices on every machine and numpy: the recorded hash, and again on a second call.
    assert digits.split_hash(indices) == digits.SPLIT_SHA256
    assert all(np.array_equal(indices[s], digits.split_indices(labels)[s]) for s in indices)
    # The loaded splits are those indices, whatever the run seed.
    assert np.array_equal(data.load("digits", "val", seed=7).indices, indices["val"])


def test_split_changes_when_the_labels_change(raw):
    """The hash is a real check: another labelling gives another split."""
    _, labels = raw
    assert digits.split_hash(digits.split_indices(np.roll(labels, 1))) != digits.SPLIT_SHA256


# ---------------------------------------------------------------- shapes and values

def test_vectors_for_an_mlp_and_images_for_a_conv_net(raw):
    vectors = data.load("digits", "train")
    images = data.load("digits", "test", image_size=8)
    x, y = vectors[0]
    assert x.shape == (64,) and x.dtype == torch.float32 and isinstance(y, int) and vectors.num_classes == 10
    assert images[0][0].shape == (1, 8, 8) and len(images) == 359
    assert vectors.info == {"name": "digits", "examples": 1079, "split": "train",
                            "options": {"input_dim": 64, "random_labels": False, "augment": False, "seed": 0}}
    assert images.info["options"] == {"image_size": 8, "random_labels": False, "augment": False, "seed": 0}
    # An image is its vector in row-major order, and a label the scikit-learn label of its index.
    flat = data.load("digits", "test")
    assert torch.equal(images.inputs.reshape(-1, 64), flat.inputs)
    assert flat.targets == raw[1][flat.indices].tolist()
    # Digits are never augmented: the option is accepted (a training regime) and recorded off.
    assert data.load("digits", "train", augment=True).info["options"]["augment"] is False


def test_standardised_with_the_train_split_statistics_only(raw):
    pixels, labels = raw
    indices = digits.split_indices(labels)
    mean, std = (pixels[indices["train"]] / 16).mean(), (pixels[indices["train"]] / 16).std()
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert (train.mean, train.std) == (test.mean, test.std) == pytest.approx((mean, std), abs=1e-12)
    assert abs(train.inputs.mean().item()) < 1e-5 and abs(train.inputs.std(unbiased=False).item() - 1) < 1e-5
    expected = torch.from_numpy(((pixels[indices["test"]] / 16 - mean) / std).astype(np.float32))
    assert torch.allclose(test.inputs, expected, atol=1e-6)
    # The test split's own statistics differ: had they been used, its mean would be 0.
    assert abs(test.inputs.mean().item()) > 1e-4


def test_random_labels_replace_labels_not_inputs(sklearn):
    true, shuffled = data.load("digits", "train"), data.load("digits", "train", random_labels=True)
    assert torch.equal(true[3][0], shuffled[3][0])
    assert 0.75 < (torch.tensor(true.targets) != shuffled.targets).float().mean() <= 1
    assert shuffled.info["options"]["random_labels"] is True


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 16}, "digits images are 8x8, not 16x16"),
    ({"image_size": 0}, "digits: image_size must be a positive integer"),
])
def test_bad_digits_options(kwargs, match, sklearn):
    with pytest.raises(FuFastError, match=match) as e:
        data.load("digits", "train", **kwargs)
    assert "\n" not in str(e.value)


def test_without_scikit_learn_one_line(monkeypatch):
    digits.raw.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)   # `import` raises ImportError
    try:
        with pytest.raises(FuFastError) as e:
            data.load("digits", "test")
        assert str(e.value) == "digits data needs scikit-learn: pip install 'fu-fast[digits]'"
        result = invoke("analyze", "--model", "mlp", "--data", "digits", "--limit", "50", "-q")
        assert one_error_line(result) == "error: digits data needs scikit-learn: pip install 'fu-fast[digits]'"
    finally:
        digits.raw.cache_clear()


# ---------------------------------------------------------------- models on digits

def test_model_inputs_fit_each_model_to_digits():
    assert data.model_inputs("digits", "mlp") == {"input_dim": 64, "num_classes": 10}
    assert data.model_inputs("digits", "alexnet") == {"input_size": 8, "in_channels": 1, "num_classes": 10}
    assert data.model_inputs("cifar10", "alexnet") == {} and data.model_inputs("synthetic", "mlp") == {}
    with pytest.raises(FuFastError) as e:
        data.model_inputs("digits", "resnet56")
    assert str(e.value) == ("resnet56 cannot read digits' one-channel 8x8 images (it has no in_channels option); "
                            "use mlp or alexnet")
    assert data.fit_model_options("digits", "mlp", {"init": "he_normal"}) == {
        "init": "he_normal", "input_dim": 64, "num_classes": 10}
    with pytest.raises(FuFastError, match="digits data needs mlp built with input_dim 64, not 10"):
        data.fit_model_options("digits", "mlp", {"input_dim": 10})


def test_a_grey_conv_net_gets_grey_synthetic_images():
    """Synthetic images follow the model's in_channels (3 by default)."""
    from fu_fast import models

    grey = models.build("alexnet", 0.25, input_size=8, in_channels=1)
    images = data.for_analysis(grey.fu_fast_config, name="synthetic", limit=4)
    assert images[0][0].shape == (1, 8, 8) and images.info["options"]["channels"] == 1
    colour = data.for_analysis(models.build("alexnet", 0.25, input_size=8).fu_fast_config, name="synthetic")
    assert colour[0][0].shape == (3, 8, 8) and "channels" not in colour.info["options"]


def test_analyze_mlp_on_digits_writes_a_document(tmp_path, sklearn):
    out = tmp_path / "r.json"
    result = invoke("analyze", "--model", "mlp", "--data", "digits", "--limit", "50", "-q", "--out", out)
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["data"]["name"] == "digits" and document["data"]["examples"] == 50
    assert document["data"]["options"]["input_dim"] == 64
    assert document["model"]["options"]["input_dim"] == 64 and document["model"]["options"]["num_classes"] == 10


def test_analyze_alexnet_on_digit_images(tmp_path, sklearn):
    out = tmp_path / "r.json"
    result = invoke("analyze", "--model", "alexnet", "--width", "0.25", "--data", "digits", "--limit", "40",
                    "--repeats", "1", "-q", "--out", out)
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["data"]["options"]["image_size"] == 8
    assert document["model"]["options"]["in_channels"] == 1 and document["model"]["options"]["input_size"] == 8


@pytest.mark.parametrize("line, fragment", [
    (("--model", "resnet56", "--data", "digits"), "resnet56 cannot read digits"),
    (("--model", "mlp", "--data", "digits", "--input-dim", "10"), "needs mlp built with input_dim 64, not 10"),
    (("--model", "alexnet", "--data", "digits", "--image-size", "32"), "needs alexnet built with input_size 8"),
])
def test_models_that_cannot_read_digits_are_one_line(line, fragment):
    one_error_line(invoke("analyze", *line, "--limit", "10", "-q"), fragment)


def test_train_then_analyze_on_digits(tmp_path, sklearn):
    run = tmp_path / "run"
    result = invoke("train", "--model", "mlp", "--width", "0.25", "--data", "digits", "--epochs", "3",
                    "--out", run, "-q")
    assert result.exit_code == 0, result.output
    record = json.loads((run / "run.json").read_text())
    assert record["data"]["train"]["name"] == "digits" and record["data"]["val"]["examples"] == 359
    assert record["model"]["options"]["input_dim"] == 64 and record["model"]["options"]["num_classes"] == 10
    assert record["epochs"][-1]["test_accuracy"] > 0.5          # learns: chance is 0.1
    out = tmp_path / "r.json"
    result = invoke("analyze", "--checkpoint", run, "--limit", "60", "-q", "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["data"]["name"] == "digits"


def test_a_synthetic_data_mlp_is_refused_on_digits(tmp_path, sklearn):
    run = tmp_path / "run"
    assert invoke("train", "--model", "mlp", "--width", "0.25", "--epochs", "1", "--out", run, "-q").exit_code == 0
    one_error_line(invoke("analyze", "--checkpoint", run, "--data", "digits", "-q"),
                   "mlp reads 10 input features and digits are 64-vectors")


def test_train_alexnet_on_digit_images(tmp_path, sklearn):
    run = tmp_path / "run"
    result = invoke("train", "--model", "alexnet", "--width", "0.25", "--data", "digits", "--epochs", "1",
                    "--out", run, "-q")
    assert result.exit_code == 0, result.output
    record = json.loads((run / "run.json").read_text())
    assert record["data"]["train"]["options"]["image_size"] == 8
    assert record["model"]["options"]["in_channels"] == 1


# ---------------------------------------------------------------- the mlp-digits preset

SMALL_DIGITS_SWEEP = """
name = "digits-small"
models = ["mlp"]
widths = [0.25, 4]
trials = 1

[train]
data = "digits"
input_dim = 64
epochs = 3

[analyze]
repeats = 2
"""


def test_the_preset_is_an_mlp_and_a_small_cnn_width_series_on_digits():
    from fu_fast.sweep import load_config

    config = load_config(preset="mlp-digits")
    members = config.members()
    mlp = [m for m in members if m.model == "mlp"]
    cnn = [m for m in members if m.model == "alexnet"]
    assert len(members) == len(mlp) + len(cnn) == 5 * 3 + 4 * 3
    assert sorted({m.width for m in mlp}) == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert sorted({m.width for m in cnn}) == [0.0625, 0.125, 0.25, 0.5]
    assert (config.reference_width_of("mlp"), config.reference_width_of("alexnet")) == (4.0, 0.5)
    assert {m.series for m in members} == {"mlp/default", "alexnet/default"}
    # The MLP trains with its defaults, as before the CNN joined: the same members, the same run.json.
    resolved = config.train_config(mlp[0], None, None).resolve()
    assert (resolved.data, resolved.input_dim, resolved.model_options["input_dim"]) == ("digits", 64, 64)
    assert (resolved.optimizer, resolved.lr, resolved.batch_size, resolved.epochs) == ("sgd_momentum", 0.05, 32, 50)
    # The CNN reads 1x8x8 images, with AlexNet's defaults but 15 epochs of batch 32.
    resolved = config.train_config(cnn[0], None, None).resolve()
    assert (resolved.data, resolved.input_dim, resolved.epochs, resolved.batch_size) == ("digits", None, 15, 32)
    assert (resolved.lr, resolved.schedule, resolved.patience) == (0.01, "exp:0.95", 10)
    options = resolved.model_options
    assert (options["input_size"], options["in_channels"], options["num_classes"]) == (8, 1, 10)


def test_the_presets_mlp_members_are_those_it_had_before_the_cnn_joined(tmp_path):
    """A sweep directory of the MLP-only preset is reused: same member folders, same training settings."""
    from fu_fast.sweep import load_config

    before = tmp_path / "mlp-digits.toml"
    before.write_text('models = ["mlp"]\nwidths = [0.25, 0.5, 1, 2, 4]\ntrials = 3\n'
                      '[train]\ndata = "digits"\ninput_dim = 64\n')
    old, new = load_config(before), load_config(preset="mlp-digits")
    now = {m.dir: new.train_config(m, None, None).resolve() for m in new.members() if m.model == "mlp"}
    assert {m.dir: old.train_config(m, None, None).resolve() for m in old.members()} == now


MIXED_DIGITS_SWEEP = """
name = "digits-mixed"
models = ["mlp", "alexnet"]
widths = [0.25, 0.5]
trials = 1

[train]
data = "digits"
epochs = 2

[model.mlp]
input_dim = 64

[model.alexnet]
widths = [0.0625, 0.125]
reference_width = 0.125
epochs = 1

[analyze]
repeats = 1
levels = 3
limit = 100
"""


def test_each_model_is_trained_and_normalised_by_its_own_settings(tmp_path, sklearn):
    """[model.alexnet]: its widths, its epochs, its reference width; the MLP, without a member at the
    sweep's reference width (4x), is reported in unit counts, as a series without its reference is."""
    config = tmp_path / "digits.toml"
    config.write_text(MIXED_DIGITS_SWEEP)
    out = tmp_path / "sweep"
    result = invoke("sweep", config, "--out", out, "-q")
    assert result.exit_code == 0, result.output
    epochs = {folder: len(json.loads((out / folder / "run.json").read_text())["epochs"])
              for folder in ("mlp/default/w0.25/t0", "alexnet/default/w0.0625/t0")}
    assert epochs == {"mlp/default/w0.25/t0": 2, "alexnet/default/w0.0625/t0": 1}
    thin, reference = (json.loads((out / f"alexnet/default/w{w}/t0/analysis.json").read_text())
                       for w in ("0.0625", "0.125"))
    for layer, reference_layer in zip(thin["layers"], reference["layers"]):
        assert layer["reference_units"] == reference_layer["units"] > layer["units"]
    mlp = json.loads((out / "mlp/default/w0.5/t0/analysis.json").read_text())
    assert all(layer["reference_units"] is None for layer in mlp["layers"])
    record = json.loads((out / "sweep.json").read_text())
    assert record["config"]["model"]["alexnet"]["reference_width"] == 0.125
    report = json.loads((out / "report" / "report.json").read_text())
    assert {s["series"]: (s["normalized"], s["reference_width"]) for s in report["series"]} == {
        "mlp/default": (False, 4.0), "alexnet/default": (True, 0.125)}
    summary = (out / "report" / "summary.md").read_text()
    assert "Values normalised by the same layer of the series' 0.125x member" in summary
    assert "**Not normalised**: the series has no 4x member" in summary
    ax = _figure_axes(out, "prunability")
    assert ax.get_ylabel() == "prunability (÷ 0.125x units; [units]: not normalised)"
    assert {"mlp [units]", "alexnet"} <= {t.get_text().split(",")[0] for t in ax.get_legend().get_texts()}


def _figure_axes(sweep_dir, name):
    """The axes of the report's figure ``name`` of the sweep in ``sweep_dir``."""
    from fu_fast.report import summarize
    from fu_fast.report.figures import FIGURES
    from fu_fast.report.tables import load_sweep

    return FIGURES[name](load_sweep(sweep_dir), summarize(sweep_dir)).axes[0]


def test_a_small_digits_sweep_runs_end_to_end(tmp_path, sklearn):
    config = tmp_path / "digits.toml"
    config.write_text(SMALL_DIGITS_SWEEP)
    out = tmp_path / "sweep"
    result = invoke("sweep", config, "--out", out, "-q")
    assert result.exit_code == 0, result.output
    summary = (out / "report" / "summary.md").read_text()
    assert "Members reported: 2 done, 0 pending." in summary
    analysis = json.loads((out / "mlp" / "default" / "w4" / "t0" / "analysis.json").read_text())
    assert analysis["data"]["name"] == "digits" and analysis["data"]["examples"] == 359


@pytest.mark.slow
def test_the_mlp_digits_preset_end_to_end(tmp_path, sklearn):
    out = tmp_path / "sweep"
    result = invoke("sweep", "--preset", "mlp-digits", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    summary = (out / "report" / "summary.md").read_text()
    assert "Members reported: 27 done, 0 pending." in summary
    report = json.loads((out / "report" / "report.json").read_text())
    accuracy = {(s["model"], row["width"]): row["accuracy"]["mean"] for s in report["series"] for row in s["rows"]}
    assert all(accuracy["mlp", width] > 0.95 for width in (0.25, 0.5, 1.0, 2.0, 4.0)), accuracy
    assert all(accuracy["alexnet", width] > 0.9 for width in (0.0625, 0.125, 0.25, 0.5)), accuracy
    assert all(s["normalized"] for s in report["series"])   # each by its own reference width
    ax = _figure_axes(out, "redundancy")
    assert ax.get_ylabel() == "redundancy (÷ units of the reference (0.5x, 4x) layer)"
    assert {"mlp (÷ 4x)", "alexnet (÷ 0.5x)"} <= {t.get_text().split(",")[0] for t in ax.get_legend().get_texts()}


def test_a_training_configuration_on_digits_builds_a_model_that_reads_them():
    """TrainConfig.resolve completes the build options from the data set, as the command line does."""
    pytest.importorskip("sklearn")
    from fu_fast.train import TrainConfig

    assert TrainConfig(model="mlp", data="digits").resolve().model_options["input_dim"] == 64
    conv = TrainConfig(model="alexnet", data="digits").resolve().model_options
    assert (conv["input_size"], conv["in_channels"], conv["num_classes"]) == (8, 1, 10)
    with pytest.raises(FuFastError, match="input_dim 64"):
        TrainConfig(model="mlp", data="digits", model_options={"input_dim": 10}).resolve()
