"""Mappability (fu_fast.analysis.mapping, `fu-fast map`) against float64 NumPy references on
constructions whose answer is known."""

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fu_fast import models
from fu_fast.analysis import masks
from fu_fast.analysis.covariance import PositionSample
from fu_fast.analysis.mapping import SCHEMA, map_layers, pair_mapping, unit_r2
from fu_fast.cli.app import app
from fu_fast.errors import FuFastError
from fu_fast.train.checkpoint import model_file_record, save_torch

from conftest import one_error_line

runner = CliRunner()


# ------------------------------------------------------------------------------ NumPy references

def ridge_r2(a: np.ndarray, b: np.ndarray, ridge: float) -> np.ndarray:
    """Per-unit R^2 of B's columns on all of A's, from the full activation matrices (float64):
    lambda = ridge * trace(S_AA) / p, R^2_j = (S_BA (S_AA + lambda I)^-1 S_AB)_jj / (S_BB)_jj."""
    s = np.cov(np.hstack([a, b]), rowvar=False)
    p = a.shape[1]
    s_aa, s_ab, s_bb = s[:p, :p], s[:p, p:], s[p:, p:]
    lam = ridge * np.trace(s_aa) / p
    fitted = np.diag(s_ab.T @ np.linalg.solve(s_aa + lam * np.eye(p), s_ab))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.diag(s_bb) > 0, fitted / np.diag(s_bb), np.nan)


def spanned_directions(a: np.ndarray, b: np.ndarray, ridge: float) -> tuple[int, int]:
    """(k, spanned): B's principal directions for 95% of its variance, and how many of them a ridge
    regression on A explains with R^2 >= 0.95 (docs/definitions.md)."""
    s = np.cov(np.hstack([a, b]), rowvar=False)
    p = a.shape[1]
    s_aa, s_ab, s_bb = s[:p, :p], s[:p, p:], s[p:, p:]
    mu, v = np.linalg.eigh(s_bb)
    mu, v = np.clip(mu[::-1], 0, None), v[:, ::-1]
    k = int(np.searchsorted(np.cumsum(mu) / mu.sum(), 0.95 - 1e-12)) + 1
    lam = ridge * np.trace(s_aa) / p
    inverse = np.linalg.inv(s_aa + lam * np.eye(p))
    r2 = [(v[:, i] @ s_ab.T @ inverse @ s_ab @ v[:, i]) / mu[i] for i in range(k)]
    return k, sum(r >= 0.95 for r in r2)


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(0), b - b.mean(0)
    return np.linalg.norm(a.T @ b) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))


# ------------------------------------------------------------------- Section 3 constructions (MLP)

D, H, K = 12, 8, 3


def mlp(hidden: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(fc1=nn.Linear(D, hidden), relu1=nn.ReLU(), out=nn.Linear(hidden, K))).double()


def widened(thin: nn.Sequential) -> nn.Sequential:
    """The thin MLP widened as in the paper's Section 3, computing the same function: every hidden
    unit duplicated with its outgoing weights split in halves (units 0..2H-1); then, with zero
    outgoing weights, a positive multiple of unit 0 (2H), a linear combination of units 1 and 2 of
    the pre-activation layer (2H+1) and a dead unit (2H+2: zero weights and bias)."""
    w, bias, v = thin.fc1.weight.detach(), thin.fc1.bias.detach(), thin.out.weight.detach()
    wide = mlp(2 * H + 3)
    with torch.no_grad():
        wide.fc1.weight.copy_(torch.cat([w, w, 2.5 * w[:1], 0.7 * w[1:2] - 1.3 * w[2:3], torch.zeros(1, D)]))
        wide.fc1.bias.copy_(torch.cat([bias, bias, 2.5 * bias[:1], 0.7 * bias[1:2] - 1.3 * bias[2:3], torch.zeros(1)]))
        wide.out.weight.copy_(torch.cat([v / 2, v / 2, torch.zeros(K, 3)], 1))
        wide.out.bias.copy_(thin.out.bias)
    return wide


@pytest.fixture
def construction():
    torch.manual_seed(0)
    thin = mlp(H)
    wide = widened(thin)
    x = torch.randn(3000, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(thin(x), wide(x), rtol=0, atol=1e-12)   # the same function
    return thin, wide, x


def activations(model: nn.Sequential, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The hidden layers computed in NumPy from the weights (independent of hooks)."""
    w, b = model.fc1.weight.detach().numpy(), model.fc1.bias.detach().numpy()
    pre = x.numpy() @ w.T + b
    return {"fc1": pre, "relu1": np.maximum(pre, 0.0)}


def test_a_widened_network_maps_back_onto_the_thin_one(construction):
    thin, wide, x = construction
    result = map_layers(thin, wide, x, layers=["fc1", "relu1"], ridge=1e-12, batch_size=700)
    assert [(m.a, m.b, m.samples) for m in result.layers] == [("fc1", "fc1", 3000), ("relu1", "relu1", 3000)]
    fc1, relu1 = result.pair("fc1"), result.pair("relu1")
    # Pre-activations: every wide unit is a linear function of the thin units; the dead one has no R^2.
    r2 = unit_r2(fc1.b_from_a)
    assert np.isnan(r2[-1]) and fc1.b_from_a.r2[-1] is None and fc1.b_from_a.live_units == 2 * H + 2
    np.testing.assert_allclose(r2[:-1], 1.0, rtol=0, atol=1e-9)
    assert fc1.b_from_a.variance_share == pytest.approx(1.0, abs=1e-9)
    # After the ReLU: duplicates and the positive multiple still are (ReLU(c z) = c ReLU(z) for c > 0),
    # the combination of two units is not.
    r2 = unit_r2(relu1.b_from_a)
    np.testing.assert_allclose(r2[:2 * H + 1], 1.0, rtol=0, atol=1e-9)
    assert r2[2 * H + 1] < 0.9 and np.isnan(r2[2 * H + 2])
    # Every thin unit is among the wide ones: the thin layer maps from the wide one, both layers.
    for pair in (fc1, relu1):
        np.testing.assert_allclose(unit_r2(pair.a_from_b), 1.0, rtol=0, atol=1e-9)
        assert pair.a_from_b.live_units == H


def test_streamed_numbers_equal_numpy_from_the_full_activations(construction):
    thin, wide, x = construction
    result = map_layers(thin, wide, x, layers=["fc1", "relu1"], batch_size=512)   # the default ridge, 1e-6
    a, b = activations(thin, x), activations(wide, x)
    for name in ("fc1", "relu1"):
        pair = result.pair(name)
        np.testing.assert_allclose(pair.covariance, np.cov(np.hstack([a[name], b[name]]), rowvar=False),
                                   rtol=1e-10, atol=1e-12)
        assert pair.cka == pytest.approx(linear_cka(a[name], b[name]), rel=1e-10)
        np.testing.assert_allclose(unit_r2(pair.b_from_a), ridge_r2(a[name], b[name], 1e-6), rtol=0, atol=1e-9)
        np.testing.assert_allclose(unit_r2(pair.a_from_b), ridge_r2(b[name], a[name], 1e-6), rtol=0, atol=1e-9)
        k, spanned = spanned_directions(a[name], b[name], 1e-6)
        assert (pair.b_from_a.components, pair.b_from_a.spanned) == (k, spanned)
        k, spanned = spanned_directions(b[name], a[name], 1e-6)
        assert (pair.a_from_b.components, pair.a_from_b.spanned) == (k, spanned)
    # The default ridge shrinks an exact map's R^2 by about 1e-6 x (mean variance / variance of the unit).
    assert 1 - 1e-4 < np.nanmin(unit_r2(result.pair("fc1").b_from_a)) < 1 - 1e-9
    # Pre-activations: the wide layer spans the thin one's space, so every principal direction is spanned;
    # after the ReLU the combination unit adds a direction the thin layer lacks.
    fc1, relu1 = result.pair("fc1"), result.pair("relu1")
    assert fc1.b_from_a.spanned == fc1.b_from_a.components > 0
    assert relu1.b_from_a.spanned < relu1.b_from_a.components
    assert relu1.a_from_b.spanned == relu1.a_from_b.components


class Take(nn.Module):
    """Columns [start, stop) of the input: a 'layer' of given features."""

    def __init__(self, start: int, stop: int):
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x):
        return x[:, self.start:self.stop]


def take(start, stop):
    return nn.Sequential(OrderedDict(take=Take(start, stop)))


def test_independent_layers_explain_what_chance_explains():
    """B (n x q) and A (n x p) independent Gaussians: the OLS R^2 of each unit of B on A is
    Beta(p/2, (n-p-1)/2), of mean p/(n-1) = 0.0100 for n = 4000, p = 40 (a 1e-6 ridge changes it by
    about 1e-8). One unit's standard deviation is about sqrt(2p)/n = 0.0022, the mean over q = 30 units
    about 0.0004; the tolerance 0.002 is five of those (the draw is seeded, so the test is fixed)."""
    n, p, q = 4000, 40, 30
    x = torch.randn(n, p + q, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    result = map_layers(take(0, p), take(p, p + q), x, layers=["take"])
    pair = result.pair("take")
    features = x.numpy()
    np.testing.assert_allclose(unit_r2(pair.b_from_a), ridge_r2(features[:, :p], features[:, p:], 1e-6),
                               rtol=0, atol=1e-9)
    assert abs(pair.b_from_a.mean - p / (n - 1)) < 0.002, (pair.b_from_a.mean, p / (n - 1))
    assert abs(pair.a_from_b.mean - q / (n - 1)) < 0.002, (pair.a_from_b.mean, q / (n - 1))
    assert pair.b_from_a.spanned == pair.a_from_b.spanned == 0
    assert pair.cka < 0.05
    # The same layer on both sides maps exactly.
    same = map_layers(take(0, p), take(0, p), x, layers=["take"], ridge=1e-12).pair("take")
    np.testing.assert_allclose(unit_r2(same.b_from_a), 1.0, atol=1e-9)
    assert same.cka == pytest.approx(1.0, abs=1e-12) and same.b_from_a.spanned == same.b_from_a.components


class ChannelsLast(nn.Module):
    def forward(self, x):
        return x.contiguous(memory_format=torch.channels_last)


def conv_model(channels: int, stride: int = 1, nhwc: bool = False, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    parts = [("nhwc", ChannelsLast())] if nhwc else []
    parts += [("conv", nn.Conv2d(3, channels, 3, padding=1, stride=stride)), ("relu", nn.ReLU())]
    return nn.Sequential(OrderedDict(parts)).double()


def test_conv_layers_share_one_position_sample():
    n, side, cap = 20, 8, 300
    x = torch.randn(n, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    model_a, model_b = conv_model(4, seed=1), conv_model(6, nhwc=True, seed=2)   # B's maps in NHWC memory
    result = map_layers(model_a, model_b, x, layers=["relu"], sample_cap=cap, seed=7, batch_size=7)
    pair = result.pair("relu")
    positions = PositionSample(n, side * side, cap, masks.sampling_seed(7, "relu")).positions
    assert pair.samples == len(positions) == cap and pair.kind == "conv"

    def rows(model, at):   # (positions, C): the channels of each (example, h, w) at the flattened positions
        with torch.no_grad():
            maps = model(x).numpy()
        return maps.transpose(0, 2, 3, 1).reshape(n * side * side, -1)[at]

    reference = np.cov(np.hstack([rows(model_a, positions), rows(model_b, positions)]), rowvar=False)
    np.testing.assert_allclose(pair.covariance, reference, rtol=1e-10, atol=1e-13)
    # A different sample for B would give another cross-covariance: the check can fail.
    other = PositionSample(n, side * side, cap, masks.sampling_seed(8, "relu")).positions
    shifted = np.cov(np.hstack([rows(model_a, positions), rows(model_b, other)]), rowvar=False)
    assert not np.allclose(pair.covariance[:4, 4:], shifted[:4, 4:], rtol=1e-3)
    # The numbers are those of the joint covariance.
    again = pair_mapping(reference, 4, a="relu", b="relu")
    assert again.cka == pytest.approx(pair.cka, rel=1e-9)
    np.testing.assert_allclose(unit_r2(again.b_from_a), unit_r2(pair.b_from_a), atol=1e-9)


def token_model(features: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(proj=nn.Linear(5, features), act=nn.GELU())).double()


def test_token_layers_share_one_position_sample_over_tokens():
    n, tokens, cap = 30, 9, 100
    x = torch.randn(n, tokens, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    model_a, model_b = token_model(3, 1), token_model(7, 2)
    pair = map_layers(model_a, model_b, x, layers=["act"], sample_cap=cap, batch_size=4).pair("act")
    assert pair.kind == "token" and (pair.units_a, pair.units_b, pair.samples) == (3, 7, cap)
    positions = PositionSample(n, tokens, cap, masks.sampling_seed(0, "act")).positions   # example * T + t
    with torch.no_grad():
        rows = [model(x).numpy().reshape(n * tokens, -1)[positions] for model in (model_a, model_b)]
    np.testing.assert_allclose(pair.covariance, np.cov(np.hstack(rows), rowvar=False), rtol=1e-10, atol=1e-13)


def test_mismatched_spatial_sizes_and_bad_settings_are_one_line_errors():
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(FuFastError, match=r"'relu' of model A \(8x8 positions per example\) and 'relu' of model B "
                                          r"\(4x4 positions per example\) cannot be mapped: their spatial sizes must "
                                          r"match"):
        map_layers(conv_model(4), conv_model(4, stride=2), x, layers=["relu"])
    with pytest.raises(FuFastError, match="ridge must be a positive number"):
        map_layers(conv_model(4), conv_model(4), x, ridge=0.0)
    with pytest.raises(FuFastError, match="model B: unknown layer 'nope'"):
        map_layers(conv_model(4), conv_model(4), x, layers=[("relu", "nope")])
    with pytest.raises(FuFastError, match="is named more than once"):
        map_layers(conv_model(4), conv_model(4), x, layers=["relu", "relu"])


def test_result_document_is_json_with_its_schema(tmp_path, construction):
    thin, wide, x = construction
    result = map_layers(thin, wide, x[:500], layers=["relu1"])
    path = result.save(tmp_path / "out" / "mapping.json")
    document = json.loads(path.read_text())
    assert document["schema"] == SCHEMA == "fu-fast/mapping/1" and document["skipped"] == []
    (pair,) = document["pairs"]
    layer = pair["layers"][0]
    assert layer["units"] == {"a": H, "b": 2 * H + 3} and layer["samples"] == 500
    assert len(layer["b_from_a"]["r2"]) == 2 * H + 3 and layer["b_from_a"]["r2"][-1] is None
    assert set(layer["b_from_a"]["r2_quantiles"]) == {"0.05", "0.25", "0.5", "0.75", "0.95"}
    assert layer["b_from_a"]["lambda"] > 0 and pair["settings"]["ridge"] == 1e-6
    assert pair["data"]["examples"] == 500 and pair["models"]["a"]["label"] == "model A"


# ------------------------------------------------------------------------------- command line

def invoke(*args):
    return runner.invoke(app, ["map", *[str(a) for a in args]])


def save_model(path, name, width, seed=0):
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch(model_file_record(models.build(name, width), {}), path)
    return path


def test_cli_maps_two_checkpoints(tmp_path):
    thin = save_model(tmp_path / "thin.pt", "mlp", 0.25)
    wide = save_model(tmp_path / "wide.pt", "mlp", 0.5, seed=1)
    out = tmp_path / "map"
    result = invoke(thin, wide, "--out", out, "--limit", "300")
    assert result.exit_code == 0, result.output
    document = json.loads((out / "mapping.json").read_text())
    (pair,) = document["pairs"]
    assert pair["relation"] == "width" and pair["series"] == "mlp" and pair["data"]["examples"] == 300
    assert pair["models"]["a"]["width"] == 0.25 and pair["models"]["b"]["width"] == 0.5
    assert pair["models"]["a"]["source"] == str(thin)
    (layer,) = pair["layers"]
    assert layer["a"] == layer["b"] == "relu1" and layer["units"] == {"a": 32, "b": 64}
    assert 0 < layer["cka"] <= 1 and 0 <= layer["b_from_a"]["mean_r2"] <= 1
    for ext in ("png", "pdf"):
        assert (out / f"mapping.{ext}").stat().st_size > 1000
    assert sorted(p.name for p in out.iterdir()) == ["mapping.json", "mapping.pdf", "mapping.png"]
    assert "relu1" in result.stdout


def test_cli_refusals_are_one_line(tmp_path):
    thin = save_model(tmp_path / "thin.pt", "mlp", 0.25)
    wide = save_model(tmp_path / "wide.pt", "mlp", 0.5)
    conv = save_model(tmp_path / "alexnet.pt", "alexnet", 0.125)
    out = tmp_path / "map"
    one_error_line(invoke(thin, conv, "--out", out, "--limit", "8"), "different families", "mlp", "alexnet")
    one_error_line(invoke(thin, tmp_path / "missing.pt", "--out", out), "WIDE", "missing.pt", "does not exist")
    one_error_line(invoke(conv, conv, "--out", out, "--data", "synthetic", "--limit", "4", "--layers", "norm1=norm2"),
                   "'norm1' of THIN (16x16 positions per example)", "'norm2' of WIDE (8x8", "spatial sizes must match")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    one_error_line(invoke(thin, wide, "--out", blocker), "cannot write into", "a-file")
    one_error_line(invoke(thin, "--out", out), "say what to map")
    one_error_line(invoke(thin, wide, "--out", out, "--layers", "relu1=", "--limit", "8"), "--layers")
    assert not out.exists()   # nothing was written by a refused command


def write_sweep(root, members):
    """A sweep directory as fu-fast sweep leaves it (sweep.json, model.pt per member, analysis.json for
    done members), of untrained MLPs: (width, trial, done) per member of series mlp/default."""
    entries = []
    for width, trial, done in members:
        folder = f"mlp/default/w{width:g}/t{trial}"
        if done:
            save_model(root / folder / "model.pt", "mlp", width, seed=trial)
            (root / folder / "analysis.json").write_text("{}")
        entries.append({"id": folder, "dir": folder, "run": folder, "model": "mlp", "width": width, "trial": trial,
                        "series": "mlp/default", "variant": {}, "epoch": None, "epochs_after": None,
                        "status": "done" if done else "pending", "analysis": {"limit": 200, "split": "test"}})
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.json").write_text(json.dumps({"schema": "fu-fast/sweep/1", "name": "s", "config": {},
                                                 "members": entries}))


def test_cli_maps_a_sweeps_neighbouring_widths_and_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    write_sweep(sweep, [(0.25, 0, True), (0.25, 1, True), (0.5, 0, True), (0.5, 1, False)])
    out = tmp_path / "map"
    result = invoke(sweep, "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert "skipping mlp/default/w0.5/t1: not done" in result.stderr
    document = json.loads((out / "mapping.json").read_text())
    pairs = [(p["relation"], p["models"]["a"]["label"], p["models"]["b"]["label"]) for p in document["pairs"]]
    assert pairs == [("width", "mlp/default/w0.25/t0", "mlp/default/w0.5/t0"),
                     ("seed", "mlp/default/w0.25/t0", "mlp/default/w0.25/t1")]
    assert [s["reason"] for s in document["skipped"]] == ["not done: mlp/default/w0.5/t1"] * 2
    assert all(p["data"]["examples"] == 200 for p in document["pairs"])   # the members' analysis limit
    assert (out / "mapping-mlp-default.png").exists() and (out / "mapping-mlp-default.pdf").exists()


def test_cli_refuses_a_sweep_record_pointing_outside(tmp_path):
    sweep = tmp_path / "sweep"
    write_sweep(sweep, [(0.25, 0, True), (0.5, 0, True)])
    record = json.loads((sweep / "sweep.json").read_text())
    record["members"][1]["dir"] = record["members"][1]["run"] = "../elsewhere"
    (sweep / "sweep.json").write_text(json.dumps(record))
    one_error_line(invoke(sweep, "--out", tmp_path / "map"), "lies outside the sweep directory")
