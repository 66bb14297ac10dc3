"""Feature visualisation and the Table 2 test (fu_fast.vis, `fu-fast visualize`)."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fu_fast import models
from fu_fast.cli.app import app
from fu_fast.train.checkpoint import model_file_record, save_torch
from fu_fast.vis import (FourierImage, Transforms, frequency_total_variation, permutation_test, random_transform,
                         rank_data, total_variation, unit_activation, visualize, write_grid)
from fu_fast.vis.render import color_matrix

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------- permutation test

def exact_p(first, second, alternative):
    """p value over all C(n1+n2, n1) splits of the pooled sample (rank sums, average ranks for
    ties): the distribution the Monte-Carlo test samples from."""
    pooled = np.concatenate([first, second])
    ranks = rank_data(pooled)
    n1 = len(first)
    observed = ranks[:n1].sum()
    sums = np.array([ranks[list(split)].sum() for split in itertools.combinations(range(len(pooled)), n1)])
    extreme = sums >= observed - 1e-9 if alternative == "greater" else sums <= observed + 1e-9
    return extreme.mean()


def test_rank_data_averages_ties():
    assert rank_data([3.0, 1.0, 3.0, 2.0, 3.0]).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]
    assert rank_data([0.5, -1.0, 0.5, 7.0]).tolist() == [2.5, 1.0, 2.5, 4.0]


# Seeds chosen so that the exact p value lies between 0.01 and 0.3 (checked below).
@pytest.mark.parametrize("sizes, ties, alternative, shift, seed", [
    ((8, 8), False, "greater", 0.7, 1),
    ((5, 7), False, "less", -0.5, 0),
    ((6, 6), True, "greater", 0.6, 0),
    ((7, 5), True, "less", -0.4, 1),
])
def test_permutation_test_matches_exact_enumeration(sizes, ties, alternative, shift, seed):
    rng = np.random.default_rng(seed)
    first = rng.normal(shift, 1.0, sizes[0])
    second = rng.normal(0.0, 1.0, sizes[1])
    if ties:   # values on a coarse grid: many ties within and across the samples
        first, second = np.round(first * 2) / 2, np.round(second * 2) / 2
        pooled = np.concatenate([first, second])
        assert len(np.unique(pooled)) < len(pooled) - 3
    p_exact = exact_p(first, second, alternative)
    assert 0.005 < p_exact < 0.5   # a p value the test can get wrong in either direction
    result = permutation_test(first, second, shufflings=100_000, alternative=alternative, seed=3)
    assert abs(result.p_value - p_exact) < 0.01, (result.p_value, p_exact)
    # The other direction is (nearly) the complement: the two tails overlap only at the observed sum.
    other = permutation_test(first, second, alternative="less" if alternative == "greater" else "greater", seed=4)
    assert other.p_value > 0.5


def test_permutation_test_separated_samples_and_the_plus_one_correction():
    first, second = [10.0, 11, 12, 13], [1.0, 2, 3, 4]
    result = permutation_test(first, second, seed=0)
    assert abs(result.p_value - 1 / math.comb(8, 4)) < 0.003   # only the observed split is as extreme
    assert result.statistic == 16.0                            # U = n1 * n2: every first value wins
    assert result.mean_effect == pytest.approx(np.mean(first) / np.mean(second))
    tiny = permutation_test(first, second, shufflings=10, seed=0)
    assert tiny.p_value >= 1 / 11                              # never below 1 / (1 + shufflings)
    assert permutation_test(first, second, alternative="less", seed=0).p_value == 1.0


def test_permutation_test_is_seeded():
    # (Its speed, about 20 ms for 100,000 shufflings of 8 vs 8, is measured, never asserted.)
    rng = np.random.default_rng(0)
    first, second = rng.normal(0.3, 1, 8), rng.normal(0, 1, 8)
    a = permutation_test(first, second, shufflings=100_000, seed=7)
    assert a.p_value == permutation_test(first, second, shufflings=100_000, seed=7).p_value
    assert a.p_value != permutation_test(first, second, shufflings=100_000, seed=8).p_value


# ------------------------------------------------------------------------------- total variation

def test_total_variation_hand_computed():
    image = np.zeros((2, 2, 4))
    image[0, 0, :2] = 1.0          # channel 0: [[1, 1, 0, 0], [0, 0, 0, 0]]
    image[1] = 0.5                 # channel 1: constant
    # Pixel space: vertical |0-1| twice, horizontal |0-1| once in row 0; channel 1 adds nothing.
    assert total_variation(image) == pytest.approx(3.0)
    # Frequency space (orthonormal 2x4 DFT, zero frequency shifted to index (1, 2)).
    # Channel 0: |X[k, l]| = |1 + exp(-i pi l / 2)| / sqrt(8) = [1/sqrt2, 1/2, 0, 1/2] in both rows;
    # shifted [0, 1/2, 1/sqrt2, 1/2] -> per row 1/2 + 2 (1/sqrt2 - 1/2) = sqrt2 - 1/2, rows equal.
    # Channel 1: only the DC term 0.5 * sqrt(8) = sqrt2 at (1, 2): one vertical and two
    # horizontal neighbours differ from it by sqrt2.
    expected = 2 * (math.sqrt(2) - 0.5) + 3 * math.sqrt(2)
    assert frequency_total_variation(image) == pytest.approx(expected)
    # Batched: one value per image, and torch input gives the same.
    batch = np.stack([image, np.zeros_like(image)])
    assert total_variation(torch.tensor(batch)).tolist() == pytest.approx([3.0, 0.0])
    assert frequency_total_variation(batch).tolist() == pytest.approx([expected, 0.0])


def test_frequency_total_variation_lower_for_smooth_images():
    y, x = np.mgrid[0:32, 0:32] / 32
    smooth = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * x)] * 3)
    noisy = np.random.default_rng(0).random((3, 32, 32))
    assert total_variation(smooth) < total_variation(noisy) / 5
    assert frequency_total_variation(smooth) < frequency_total_variation(noisy) / 2


# ------------------------------------------------------------------------------- parameterisation

def test_fourier_image_range_and_round_trip():
    g = torch.Generator().manual_seed(0)
    param = FourierImage(3, 20, 24, generator=g)
    image = param()
    assert image.shape == (3, 3, 20, 24)
    assert 0.0 < image.min() and image.max() < 1.0
    assert (image - 0.5).abs().max() < 0.05   # starts near grey, in the sigmoid's linear range
    # Large spectra still give valid images (the sigmoid bounds them).
    with torch.no_grad():
        param.spectrum.mul_(1e4)
    assert 0.0 <= param().min() and param().max() <= 1.0
    target = torch.rand(3, 3, 20, 24, generator=g) * 0.9 + 0.05
    assert torch.allclose(param.set_image(target)(), target, atol=1e-5)
    # lucid's normalisation: the colour matrix's largest column norm is 1.
    assert color_matrix().norm(dim=0).max().item() == pytest.approx(1.0)


def test_random_transform_pads_with_noise_and_keeps_the_image_without_motion():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 32, 32, generator=g)
    still = Transforms(pad=14, jitter=0, scale=0, degrees=0)   # 14 px at 224 -> 2 px at 32
    seen = random_transform(images, still, g)
    assert seen.shape == (2, 3, 36, 36)
    assert torch.allclose(seen[..., 2:34, 2:34], images, atol=1e-5)
    border = torch.cat([seen[..., :2, :].flatten(), seen[..., -2:, :].flatten()])
    assert 0 <= border.min() and border.max() <= 1 and border.std() > 0.2   # uniform noise, not a constant
    moved = random_transform(images, Transforms(), g)   # 12 px at 224 -> 2 px at 32
    assert moved.shape == (2, 3, 36, 36) and not torch.allclose(moved[..., 2:34, 2:34], images, atol=1e-2)


def test_unit_activation_mean_and_center():
    output = torch.arange(2 * 3 * 3 * 3, dtype=torch.float32).view(2, 3, 3, 3)
    units = torch.tensor([2, 0])
    assert unit_activation(output, units, "mean").tolist() == [output[0, 2].mean().item(), output[1, 0].mean().item()]
    assert unit_activation(output, units, "center").tolist() == [output[0, 2, 1, 1].item(), output[1, 0, 1, 1].item()]
    assert unit_activation(output[:, :, 0, 0], units, "mean").tolist() == [output[0, 2, 0, 0].item(),
                                                                            output[1, 0, 0, 0].item()]


# ------------------------------------------------------------------------------- visualisation

@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return models.build("resnet18", 0.25).eval()


def test_visualization_raises_the_units_activation(resnet):
    units = [0, 3, 5, 9, 12, 17, 22, 30]
    result = visualize(resnet, "layer2.0", units, steps=48, image_size=64, seed=1, device="cpu")
    start, final = np.array(result.start_activation), np.array(result.final_activation)
    assert result.images.shape == (8, 3, 64, 64) and result.units == units
    assert 0 <= result.images.min() and result.images.max() <= 1
    assert final.mean() > 3 * start.mean() and final.mean() > start.mean() + 0.3, (start, final)
    assert (final >= start - 1e-6).all(), (start, final)
    # Units that respond to the grey start at all are driven well above it, one by one.
    live = start > 1e-3
    assert live.sum() >= 6 and (final[live] > 3 * start[live]).all(), (start, final)
    # Seeded: the same call gives the same images.
    assert torch.equal(visualize(resnet, "layer2.0", units[:2], steps=3, image_size=64, seed=1).images,
                       visualize(resnet, "layer2.0", units[:2], steps=3, image_size=64, seed=1).images)


def test_grid_is_a_png(tmp_path):
    images = np.random.default_rng(0).random((5, 3, 16, 16))
    path = write_grid(tmp_path / "g" / "grid.png", images, [1, 2, 3, 4, 5], "five units")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]   # no temporary file left


# ------------------------------------------------------------------------------- command line

def invoke(*args):
    return runner.invoke(app, ["visualize", *[str(a) for a in args]])


def save_model(path, name, width, seed=0):
    torch.manual_seed(seed)
    save_torch(model_file_record(models.build(name, width), {}), path)
    return path


def test_cli_compares_two_checkpoints(tmp_path):
    thin = save_model(tmp_path / "thin.pt", "resnet18", 0.125)
    wide = save_model(tmp_path / "wide.pt", "resnet18", 0.25)
    out = tmp_path / "vis"
    result = invoke(thin, wide, "--out", out, "--layers", "layer1.0", "--layers", "layer4.1", "--units", "3",
                    "--steps", "4", "--image-size", "48", "--shufflings", "5000", "--device", "cpu")
    assert result.exit_code == 0, result.output
    document = json.loads((out / "visualize.json").read_text())
    assert document["schema"] == "fu-fast/visualize/1"
    assert document["models"]["thin"]["width"] == 0.125 and document["models"]["wide"]["width"] == 0.25
    assert document["models"]["thin"]["source"] == str(thin) and document["models"]["wide"]["data"] == "imagenet"
    assert document["settings"]["steps"] == 4 and document["settings"]["image_size"] == 48
    assert [layer["name"] for layer in document["layers"]] == ["layer1.0", "layer4.1"]
    for layer in document["layers"]:
        for label, channels in (("thin", {"layer1.0": 8, "layer4.1": 64}), ("wide", {"layer1.0": 16, "layer4.1": 128})):
            record = layer[label]
            assert record["channels"] == channels[layer["name"]]
            assert len(record["units"]) == len(set(record["units"])) == 3
            assert len(record["tv_pixel"]) == len(record["tv_frequency"]) == 3
            assert all(v > 0 for v in record["tv_pixel"] + record["tv_frequency"])
            grid = out / record["grid"]
            assert grid.read_bytes().startswith(PNG_MAGIC)
        for space in ("pixel", "frequency"):
            test = layer[space]
            assert 1 / 5001 <= test["p_value"] <= 1
            assert test["thin_mean"] == pytest.approx(np.mean(layer["thin"][f"tv_{space}"]))
            assert test["mean_effect"] == pytest.approx(test["thin_mean"] / test["wide_mean"])
    table = (out / "table2.md").read_text()
    assert "| layer1.0 |" in table and "| layer4.1 |" in table and "p (frequency)" in table
    assert "layer4.1" in result.stdout and "effect" in result.stdout
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["thin_layer1.0.png", "thin_layer4.1.png",
                                                                 "wide_layer1.0.png", "wide_layer4.1.png"]


def test_cli_untrained_zoo_models(tmp_path):
    out = tmp_path / "vis"
    result = invoke("--model", "resnet56", "--thin-width", "0.25", "--wide-width", "0.5", "--out", out,
                    "--layers", "layer3.8", "--units", "2", "--steps", "2", "--shufflings", "1000", "-q")
    assert result.exit_code == 0, result.output
    document = json.loads((out / "visualize.json").read_text())
    assert document["settings"]["image_size"] == 32   # the model's own input size (CIFAR)
    assert document["models"]["thin"]["data"] == "cifar10" and document["models"]["thin"]["source"] == "untrained"
    assert result.stdout == ""


@pytest.mark.parametrize("args, fragments", [
    (["{tmp}/missing.pt", "{tmp}/wide.pt"], ["does not exist"]),
    (["{tmp}/thin.pt", "{tmp}/wide.pt", "--layers", "layer9.9"], ["unknown layer", "layer9.9"]),
    (["{tmp}/thin.pt", "{tmp}/alexnet.pt"], ["different families", "alexnet"]),
    (["--model", "mlp"], ["image model"]),
    (["{tmp}/thin.pt"], ["two checkpoints"]),
    (["--model", "resnet18", "--units", "0"], ["units"]),
])
def test_cli_user_errors_are_one_line_and_write_nothing(tmp_path, args, fragments):
    save_model(tmp_path / "thin.pt", "resnet18", 0.125)
    save_model(tmp_path / "wide.pt", "resnet18", 0.25)
    save_model(tmp_path / "alexnet.pt", "alexnet", 0.125)
    out = tmp_path / "vis"
    result = invoke(*[a.replace("{tmp}", str(tmp_path)) for a in args], "--out", out, "--steps", "2")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists()
