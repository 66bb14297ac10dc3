"""Thinner equivalent networks (fu_fast.compress, `fu-fast compress`).

Known answers: the Section 3 constructions (tests/test_constructions.py) are a narrow network
with every hidden unit duplicated, so refactoring must give back exactly the narrow unit count
and the narrow network's function. Trained MLPs of a width series must compress while keeping
the labels. The refactorisation is checked against the least-squares formula it implements.
"""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fu_fast import models
from fu_fast.cli.app import app
from fu_fast.compress import refactor
from fu_fast.compress.engine import compress
from fu_fast.compress.checkpoint import save
from fu_fast.errors import FuFastError
from fu_fast.train import TrainConfig, load_model, train
from fu_fast.train.checkpoint import model_file_record, save_torch

from conftest import mlp
from test_constructions import HIDDEN, setup, weight_balanced, zero_weight_copy

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------- Section 3 constructions

@pytest.mark.parametrize("construct", [zero_weight_copy, weight_balanced])
def test_section3_constructions_refactor_back_to_the_narrow_network(construct):
    narrow, inputs = setup(seed=0)
    wide = construct(narrow)
    # pca_tolerance ~0: keep every direction with variance, so the count is the exact rank (64
    # independent random ReLU features, each duplicated once)
    result = compress(wide, inputs, method="refactor", tolerance=0.0, pca_tolerance=1e-9)
    layer = result.report["layers"][0]
    assert (layer["units_before"], layer["units_after"]) == (2 * HIDDEN, HIDDEN)
    assert layer["refactor"]["components"] == HIDDEN and not layer["refactor"]["raised_for_tolerance"]
    assert result.report["agreement"] == {"fit": 1.0, "eval": 1.0}
    thin = result.model
    assert thin[0].weight.shape == narrow[0].weight.shape and thin[2].weight.shape == narrow[2].weight.shape
    assert models.parameter_count(thin) == models.parameter_count(narrow)
    with torch.no_grad():   # the same function as the narrow network, not only the same labels
        torch.testing.assert_close(thin(inputs), narrow(inputs), rtol=1e-8, atol=1e-8)
    assert result.report["parameters"] == {"before": models.parameter_count(wide),
                                           "after": models.parameter_count(narrow)}
    # at the default PCA tolerance the wide network thins exactly as far as the narrow one
    narrow_thin = compress(narrow, inputs, method="refactor", tolerance=1.0)
    wide_thin = compress(wide, inputs, method="refactor", tolerance=1.0)
    assert narrow_thin.report["layers"][0]["units_after"] == wide_thin.report["layers"][0]["units_after"] < HIDDEN


def test_both_methods_on_the_constructions_keep_every_label():
    narrow, inputs = setup(seed=1)
    for construct in (zero_weight_copy, weight_balanced):
        result = compress(construct(narrow), inputs[:1000], eval_data=inputs[1000:], tolerance=0.0,
                          pca_tolerance=1e-9)
        assert result.report["layers"][0]["units_after"] <= HIDDEN
        assert result.report["agreement"] == {"fit": 1.0, "eval": 1.0}


def test_pruning_finds_the_zero_weight_copies_but_not_balanced_ones():
    narrow, inputs = setup(seed=0)
    inputs = inputs[:800]
    copied = compress(zero_weight_copy(narrow), inputs, method="prune", tolerance=0.0, search_method="greedy")
    layer = copied.report["layers"][0]
    # each copy contributes exactly nothing, so greedy takes all of them (and maybe a few
    # originals that change no label on these inputs)
    assert layer["prune"]["dropped"] >= HIDDEN and copied.report["agreement"]["fit"] == 1.0
    balanced = compress(weight_balanced(narrow), inputs, method="prune", tolerance=0.0, search_method="greedy")
    # the paper's point: balancing makes every unit matter for the labels, though half are redundant
    assert balanced.report["layers"][0]["units_after"] > 3 * HIDDEN // 2
    assert balanced.report["agreement"]["fit"] == 1.0


# ---------------------------------------------------------------- the refactorisation's maths

def _cpqr_order(a: np.ndarray) -> list[int]:
    """Reference column-pivoted Gram-Schmidt on the centred activations."""
    residual = a - a.mean(0)
    order = []
    for _ in range(a.shape[1]):
        norms = (residual ** 2).sum(0)
        norms[order] = -1.0
        j = int(np.argmax(norms))
        if norms[j] <= 1e-20:
            break
        order.append(j)
        q = residual[:, j] / np.linalg.norm(residual[:, j])
        residual = residual - np.outer(q, q @ residual)
    return order


def test_refactor_equals_the_centred_least_squares_reference(generator):
    net = mlp(5, 7, 3, seed=3)
    x = torch.randn(400, 5, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        a = net[1](net[0](x))
    mean, covariance, samples = refactor.statistics(a, 10_000, generator)
    assert samples == 400
    order = refactor.pivot_order(covariance)
    assert list(order[:len(_cpqr_order(a.numpy()))]) == _cpqr_order(a.numpy())
    kept, dropped = np.sort(order[:4]), np.sort(order[4:])
    c, d = refactor.coefficients(mean, covariance, kept, dropped)
    weight, bias = refactor.rewrite(net[2].weight.detach().reshape(3, 7, 1), net[2].bias.detach(), kept, dropped, c, d)
    # W' = pinv(A') A W with centring: least squares of the outputs A W^T on [A_S, 1]
    design = np.hstack([a.numpy()[:, kept], np.ones((400, 1))])
    target = a.numpy() @ net[2].weight.detach().numpy().T
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    np.testing.assert_allclose(weight[:, kept, 0].numpy(), solution[:-1].T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(bias.numpy(), net[2].bias.detach().numpy() + solution[-1], rtol=1e-8, atol=1e-10)
    assert torch.all(weight[:, dropped] == 0)


def _conv_net(channels, pad, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, channels, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(channels, 6, 3, padding=pad), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(6 * (8 if pad else 6) ** 2, 4)).to(torch.float64)


@pytest.mark.parametrize("pad", [0, 1])
def test_conv_refactor_folds_duplicated_and_constant_channels(generator, pad):
    """4 channels, their 4 copies (outgoing weights balanced: +B on the original, -B on the
    copy) and a constant channel (zero filter, bias 0.7). Refactoring keeps 4 channels; the
    copies fold exactly, and the constant folds into conv2's bias, which is exact away from
    the borders and, with zero padding, not at them (the documented approximation)."""
    narrow = _conv_net(4, pad)
    wide = _conv_net(9, pad)
    balance = torch.randn(6, 4, 3, 3, generator=generator, dtype=torch.float64)
    constant_out = torch.randn(6, 1, 3, 3, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        wide[0].weight.copy_(torch.cat([narrow[0].weight, narrow[0].weight,
                                        torch.zeros(1, 3, 3, 3, dtype=torch.float64)]))
        wide[0].bias.copy_(torch.cat([narrow[0].bias, narrow[0].bias, torch.tensor([0.7], dtype=torch.float64)]))
        wide[2].weight.copy_(torch.cat([narrow[2].weight + balance, -balance, constant_out], dim=1))
        wide[2].bias.copy_(narrow[2].bias - 0.7 * constant_out.sum((1, 2, 3)))   # cancel it in the interior
        wide[5].load_state_dict(narrow[5].state_dict())
    x = torch.randn(60, 3, 8, 8, generator=generator, dtype=torch.float64)
    # tolerance 1: m' from the PCA tolerance alone (no raising for the labels), to see the
    # border effect itself
    result = compress(wide, x, layers=["1"], method="refactor", tolerance=1.0, pca_tolerance=1e-9)
    layer = result.report["layers"][0]
    assert (layer["kind"], layer["units_before"], layer["units_after"]) == ("conv", 9, 4)
    assert layer["refactor"]["samples"] == 60 * 64
    thin = result.model
    with torch.no_grad():
        z_thin, z_wide = thin[2](thin[1](thin[0](x))), wide[2](wide[1](wide[0](x)))
    if pad == 0:
        assert layer["exact"]
        torch.testing.assert_close(thin(x), wide(x), rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(thin(x), narrow(x), rtol=1e-8, atol=1e-8)
    else:
        # at the borders the wide conv2 reads zero padding where the constant channel would
        # be 0.7, and the folded bias cannot know that
        assert not layer["exact"] and "borders" in layer["notes"][0]
        torch.testing.assert_close(z_thin[..., 1:-1, 1:-1], z_wide[..., 1:-1, 1:-1], rtol=1e-8, atol=1e-8)
        assert (z_thin[..., 0, :] - z_wide[..., 0, :]).abs().max() > 1e-3


def test_random_search_prunes_with_the_keyed_orders():
    narrow, inputs = setup(seed=0)
    wide = zero_weight_copy(narrow)
    a = compress(wide, inputs[:500], method="prune", tolerance=0.05, search_method="random", seed=4)
    b = compress(wide, inputs[:500], method="prune", tolerance=0.05, search_method="random", seed=4)
    assert a.report["layers"][0]["prune"]["search"] == "random"
    assert a.report["layers"][0]["units_after"] == b.report["layers"][0]["units_after"] < 2 * HIDDEN
    assert a.report["agreement"]["fit"] >= 0.95


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("name, why", [("resnet56", "residual"), ("resnet18", "residual"),
                                       ("inception_v3", "concatenate")])
def test_models_with_skip_connections_are_refused(name, why):
    with torch.device("meta"):
        model = models.build(name)
    with pytest.raises(FuFastError, match=why):
        compress(model, torch.zeros(2, 3, 32, 32))


def test_bad_settings_and_layers_are_refused():
    narrow, inputs = setup(seed=0)
    with pytest.raises(FuFastError, match="method"):
        compress(narrow, inputs, method="shrink")
    with pytest.raises(FuFastError, match="tolerance"):
        compress(narrow, inputs, tolerance=1.5)
    with pytest.raises(FuFastError, match="output"):
        compress(narrow, inputs, layers=["2"])
    with pytest.raises(FuFastError, match="unknown layer"):
        compress(narrow, inputs, layers=["relu9"])


# ---------------------------------------------------------------- trained MLPs and AlexNet

@pytest.fixture(scope="module")
def trained_series(tmp_path_factory):
    root = tmp_path_factory.mktemp("series")
    runs = {}
    for width in (0.25, 1.0, 4.0):
        runs[width] = root / f"mlp-{width}"
        train(TrainConfig(model="mlp", width=width, epochs=10, device="cpu"), runs[width], silent=True)
    return runs


def test_trained_mlp_series_compresses_keeping_labels(trained_series):
    from fu_fast import data

    units = {}
    for width, run in trained_series.items():
        model, _ = load_model(run)
        fit, test = data.load("synthetic", "train"), data.load("synthetic", "test")
        result = compress(model, fit, eval_data=test)   # default tolerances
        report = result.report
        assert report["agreement"]["fit"] >= 0.98   # the default tolerance, on the fit set
        assert report["agreement"]["eval"] >= 0.95
        assert report["accuracy"]["thin"] >= report["accuracy"]["wide"] - 0.03
        assert report["parameters"]["after"] < report["parameters"]["before"]
        units[width] = report["layers"][0]["units_after"]
    # wider networks are not really that wide: the 4x network thins to far below its 512
    # units, and to no more than a few times what the 1/4x one keeps
    assert units[4.0] < 512 // 4
    assert units[4.0] <= 4 * units[0.25]


def test_cli_compress_then_analyze_the_thin_checkpoint(trained_series, tmp_path):
    thin_dir = tmp_path / "thin"
    result = invoke("compress", "--checkpoint", trained_series[4.0], "--out", thin_dir)
    assert result.exit_code == 0, result.output
    assert "relu1" in result.stdout and "512 ->" in result.stdout
    report = json.loads((thin_dir / "compress.json").read_text())
    assert report["schema"] == "fu-fast/compress/1" and report["layers"][0]["units_before"] == 512
    kept = report["layers"][0]["units_after"]
    assert report["thin_model"]["width"] == kept / 128
    assert report["data"]["fit"]["split"] == "train" and report["data"]["eval"]["split"] == "test"
    thin, record = load_model(thin_dir)
    assert thin.fc1.out_features == kept and record["compressed_from"] == str(trained_series[4.0])
    analysis = tmp_path / "analysis.json"
    result = invoke("analyze", "--checkpoint", thin_dir, "--out", analysis, "--repeats", "1", "--quiet")
    assert result.exit_code == 0, result.output
    document = json.loads(analysis.read_text())
    assert document["layers"][0]["units"] == kept
    assert document["model"]["parameters"] == report["parameters"]["after"]
    assert document["data"]["split"] == "test"


def test_cli_errors_leave_no_files(tmp_path):
    out = tmp_path / "thin"
    result = invoke("compress", "--checkpoint", tmp_path / "missing", "--out", out)
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert not out.exists()
    run = tmp_path / "resnet"
    save_torch(model_file_record(models.build("resnet56", 0.25), {}), run / "model.pt")
    result = invoke("compress", "--checkpoint", run, "--out", out)
    assert result.exit_code == 2 and "residual" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not out.exists()


def test_alexnet_thins_and_reloads_through_the_registry(tmp_path, generator):
    torch.manual_seed(0)
    wide = models.build("alexnet", 0.25).eval()
    x = torch.randn(120, 3, 32, 32, generator=generator)
    result = compress(wide, x, layers=["norm2", "relu3", "relu4"], tolerance=0.05, pca_tolerance=0.1)
    layers = {layer["name"]: layer for layer in result.report["layers"]}
    assert not layers["norm2"]["exact"] and "LocalResponseNorm" in layers["norm2"]["notes"][0]
    assert layers["relu3"]["exact"] and layers["relu3"]["units_after"] < 96
    assert result.report["agreement"]["fit"] >= 0.95
    save(result, tmp_path / "thin", source="memory")
    reloaded, _ = load_model(tmp_path / "thin")
    assert reloaded.layer_units() == result.model.layer_units() != wide.layer_units()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), result.model(x))
    # a plain AlexNet still refuses weights of another width
    with pytest.raises(RuntimeError, match="size mismatch"):
        models.build("alexnet", 0.5).load_state_dict(wide.state_dict())
