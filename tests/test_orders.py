"""Targeted ablation (fu_fast.analysis.orders): each order's curve equals a naive path whose
masks come from a sort done in NumPy on the layer's activations and weights."""

import numpy as np
import pytest
import torch
from torch import nn

import fu_fast
from fu_fast import FuFastError
from fu_fast.analysis import masks

GRID = masks.level_grid(6)
ALL = ["random", "activation", "weight_norm", "redundancy", "selectivity", "activation_reverse",
       "weight_norm_reverse", "redundancy_reverse", "selectivity_reverse"]


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4)).double().eval()


X = torch.randn(90, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
LABELS = torch.randint(0, 4, (90,), generator=torch.Generator().manual_seed(2))


def numpy_ranks(scores, descending=False, reverse=False):
    key = -scores if descending else scores
    key = np.where(np.isnan(key), -np.inf, key)
    ranks = np.empty(len(key), dtype=np.int64)
    ranks[np.argsort(key, kind="stable")] = np.arange(len(key))
    return len(ranks) - 1 - ranks if reverse else ranks


def numpy_scores(model, x, labels):
    with torch.inference_mode():
        h = model[1](model[0](x)).numpy()
    weight_norm = np.abs(model[2].weight.detach().numpy()).sum(axis=0)
    std = h.std(axis=0)
    live = std > 0
    r = np.abs(np.corrcoef(h[:, live], rowvar=False))
    np.fill_diagonal(r, 0.0)
    redundancy = np.full(h.shape[1], np.nan)
    redundancy[live] = r.sum(axis=1) / (live.sum() - 1)
    means = np.stack([h[labels == c].mean(axis=0) for c in np.unique(labels)])
    top = means.max(axis=0)
    rest = (means.sum(axis=0) - top) / (len(means) - 1)
    ok = (means.min(axis=0) >= 0) & (top + rest > 0)
    selectivity = np.where(ok, (top - rest) / np.where(ok, top + rest, 1), np.nan)
    return {"activation": (h.mean(axis=0), False), "weight_norm": (weight_norm, False),
            "redundancy": (redundancy, True), "selectivity": (selectivity, False)}


def naive_curve(model, x, ranks):
    with torch.inference_mode():
        base = model(x).argmax(dim=1)
        curve = []
        for p in GRID:
            t = masks.threshold(p, len(ranks))
            keep = torch.from_numpy(ranks >= t).double()
            h = model[1](model[0](x)) * keep
            curve.append(float((model[2](h).argmax(dim=1) == base).double().mean()))
    return curve


def test_every_order_equals_a_numpy_sort_and_the_naive_path():
    model = mlp()
    result = fu_fast.analyze(model, (X, LABELS), layers=["1"], orders=ALL, repeats=2, levels=GRID, batch_size=32)
    layer = result.layers["1"]
    scores = numpy_scores(model, X, LABELS.numpy())
    assert set(layer.orders) == set(ALL) - {"random"}
    for order, entry in layer.orders.items():
        base = order.removesuffix("_reverse")
        values, descending = scores[base]
        expected = naive_curve(model, X, numpy_ranks(values, descending, reverse=base != order))
        assert entry["curve"] == pytest.approx(expected, abs=1e-15), order
        assert entry["prunable_fraction"] == fu_fast.analysis.ablation.prunable_fraction(GRID, entry["curve"], 0.2)
    assert result.timing["passes_over_data"] == 2 and result.settings["orders"] == ALL
    # The random curves are the same with or without the targeted orders.
    alone = fu_fast.analyze(model, (X, LABELS), layers=["1"], repeats=2, levels=GRID).layers["1"]
    assert alone.curves == layer.curves and alone.components == layer.components
    assert alone.orders is None and alone.to_dict()["orders"] is None
    # Activation-order ablation is not random ablation: the curves differ somewhere.
    assert any(layer.orders[o]["curve"] != layer.curves[0] for o in layer.orders)


def test_weight_norm_alone_needs_one_pass_and_reads_a_flattened_conv_per_position():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()
    x = torch.randn(40, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    result = fu_fast.analyze(model, x, layers=["1"], orders=["random", "weight_norm"], repeats=1, levels=GRID,
                             unit="position")
    assert result.timing["passes_over_data"] == 1
    column_norms = np.abs(model[3].weight.detach().double().numpy()).sum(axis=0)   # per (c, h, w) position
    ranks = numpy_ranks(column_norms)
    with torch.inference_mode():
        base = model(x).argmax(dim=1)
        expected = []
        for p in GRID:
            keep = torch.from_numpy(ranks >= masks.threshold(p, 48)).float().reshape(1, 3, 4, 4)
            expected.append(float((model[3](model[2](model[1](model[0](x)) * keep)).argmax(1) == base).double().mean()))
    assert result.layers["1"].orders["weight_norm"]["curve"] == pytest.approx(expected, abs=1e-12)


def test_orders_are_checked_in_one_line():
    for orders, message in ((["activation"], "must include 'random'"), (["random", "size"], "unknown order 'size'"),
                            (["random", "random"], "named more than once"), ("random", "must be a list")):
        with pytest.raises(FuFastError, match=message):
            fu_fast.analyze(mlp(), X, layers=["1"], orders=orders)
    plain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.LayerNorm(8), nn.Linear(8, 3)).double().eval()
    with pytest.raises(FuFastError, match="no linear or conv layer reads its output directly"):
        fu_fast.analyze(plain, X, layers=["1"], orders=["random", "weight_norm"])


def test_a_document_with_orders_validates_against_the_schema(tmp_path):
    import json
    from pathlib import Path

    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).resolve().parent.parent / "docs" / "result.schema.json").read_text())
    result = fu_fast.analyze(mlp(), (X, LABELS), layers=["1"], orders=["random", "redundancy_reverse"], levels=GRID)
    document = json.loads(result.save(tmp_path / "r.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(document)
    loaded = fu_fast.AnalysisResult.load(tmp_path / "r.json")
    assert loaded.layers["1"].orders == result.layers["1"].orders
    document["layers"][0]["orders"]["redundancy_reverse"]["curve"] = [1.5, 0.2]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(document)


def test_the_command_line_takes_orders_and_noise_levels(tmp_path):
    import json

    from typer.testing import CliRunner

    from fu_fast.cli.app import app

    out = tmp_path / "r.json"
    run = CliRunner().invoke(app, ["analyze", "--model", "mlp", "--width", "0.25", "--limit", "40", "-q",
                                   "--orders", "redundancy", "--orders", "weight_norm_reverse",
                                   "--noise-levels", "0,0.5,1", "--out", str(out)])
    assert run.exit_code == 0, run.output
    document = json.loads(out.read_text())
    assert document["settings"]["orders"] == ["random", "redundancy", "weight_norm_reverse"]
    assert document["settings"]["noise_levels"] == [0.0, 0.5, 1.0]
    layer = document["layers"][0]
    assert set(layer["orders"]) == {"redundancy", "weight_norm_reverse"} and len(layer["noise"]["curves"]) == 3
    for bad, message in ((["--noise-levels", "0,x"], "--noise-levels takes comma-separated numbers"),
                         (["--noise-levels", "1,2"], "noise_levels must start at 0"),
                         (["--orders", "size"], "unknown order 'size'")):
        run = CliRunner().invoke(app, ["analyze", "--model", "mlp", "--limit", "10", "-q", *bad])
        lines = run.output.strip().splitlines()
        assert run.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_a_sweep_records_its_orders_and_noise_levels_as_the_analysis_does():
    from fu_fast.sweep import load_config

    config = load_config(preset="mlp-synthetic-beyond")
    settings = config.analysis_settings()
    assert settings["orders"][0] == "random" and len(settings["orders"]) == 9
    assert settings["noise_levels"] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    plain = load_config(preset="mlp-synthetic-10d").analysis_settings()
    assert plain["orders"] == ["random"] and plain["noise_levels"] is None
