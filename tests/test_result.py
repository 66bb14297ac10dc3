"""The result document (docs/result-format.md), atomic writing, normalisation and the gain."""

import json
import math

import numpy as np
import pytest
import torch

import fu_fast
from fu_fast.analysis.result import AnalysisResult

from conftest import mlp, small_cnn

LAYER_KEYS = {"name", "kind", "unit", "expanded_at", "units", "ablation_units", "reference_units",
              "reference_ablation_units", "prunability", "redundancy", "correlation", "selectivity", "orders",
              "noise"}


@pytest.fixture(scope="module")
def result():
    model = small_cnn(channels=3, seed=0)
    inputs = torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return fu_fast.analyze(model, inputs, model_info={"name": "small_cnn", "width": 0.5, "options": {"init": "he"}},
                           data_info={"name": "noise", "split": "test"}, trial=2, sample_cap=100)


def test_document_has_exactly_the_spec_fields(result):
    doc = result.to_dict()
    assert set(doc) == {"schema", "model", "data", "trial", "settings", "layers", "summary", "timing", "build"}
    assert doc["schema"] == "fu-fast/analysis/2" and doc["trial"] == 2
    assert doc["model"] == {"name": "small_cnn", "width": 0.5,
                            "parameters": sum(p.numel() for p in small_cnn(3).parameters()),
                            "accuracy": None, "options": {"init": "he"}}
    assert doc["data"] == {"name": "noise", "examples": 24, "predictions": 24, "split": "test", "options": {}}
    assert set(doc["settings"]) == {"tolerance", "pca_tolerance", "repeats", "levels", "sample_cap", "unit",
                                    "seed", "orders", "noise_levels", "precision", "device"}
    assert doc["settings"]["precision"] == "fp64" and doc["settings"]["device"] == "cpu"
    assert len(doc["settings"]["levels"]) == 21
    for layer in doc["layers"]:
        assert set(layer) == LAYER_KEYS
        assert set(layer["prunability"]) == {"curves", "prunable_fraction", "prunable_units", "normalized"}
        assert set(layer["redundancy"]) == {"samples", "components", "redundant_units",
                                            "explained_variance_ratio", "normalized", "components_80"}
        assert set(layer["correlation"]) == {"mean_abs_r", "abs_r_quantiles", "similar_units"}
        assert set(layer["correlation"]["abs_r_quantiles"]) == {"0.05", "0.25", "0.5", "0.75", "0.95"}
        assert layer["redundancy"]["samples"] == 100
        assert len(layer["prunability"]["curves"]) == 3
    assert doc["summary"] == {"prunability": None, "redundancy": None}
    assert doc["build"]["backend"] == "cpu" and doc["build"]["kernels"] == "cpu"
    assert doc["timing"]["passes_over_data"] == 1


def test_save_is_atomic_and_round_trips(result, tmp_path):
    path = result.save(tmp_path / "out" / "analysis.json")
    assert [p.name for p in path.parent.iterdir()] == ["analysis.json"]
    loaded = AnalysisResult.load(path)
    assert loaded.to_dict() == json.loads(path.read_text())
    assert loaded.to_dict() == result.to_dict()


def test_failed_write_leaves_no_file(result, tmp_path, monkeypatch):
    path = tmp_path / "analysis.json"
    path.write_text("previous")
    layer = next(iter(result.layers.values()))
    monkeypatch.setattr(layer, "prunable_fraction", float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        result.save(path)
    assert path.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["analysis.json"]


def test_normalisation_by_the_reference_model():
    inputs = torch.randn(300, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    narrow = fu_fast.analyze(mlp(10, 16, 4, seed=1), inputs)
    wide = fu_fast.analyze(mlp(10, 64, 4, seed=2), inputs)
    narrow.normalize(wide)
    layer = narrow.layers["1"]
    assert layer.reference_units == 64 and layer.reference_ablation_units == 64
    assert layer.prunability_normalized == pytest.approx(layer.prunable_units / 64)
    assert layer.redundancy_normalized == pytest.approx(layer.redundant_units / 64)
    assert narrow.to_dict()["summary"] == {"prunability": layer.prunability_normalized,
                                           "redundancy": layer.redundancy_normalized}


def test_gain():
    widths = [0.25, 0.5, 1, 2, 4]
    assert fu_fast.gain(widths, [3 * w for w in widths]) == pytest.approx(2.0)
    assert fu_fast.gain(widths, [5 * w ** 2 for w in widths]) == pytest.approx(4.0)
    assert fu_fast.gain(widths, [7.0] * 5) == pytest.approx(1.0)
    noisy = [1.0, 2.2, 3.9, 8.5, 15.0]
    slope = math.log2(fu_fast.gain(widths, noisy))
    assert slope == pytest.approx(np.polyfit(np.log2(widths), np.log2(noisy), 1)[0])
    for widths_, values in [([1], [1]), ([1, 1], [1, 2]), ([1, 2], [0, 1]), ([1, 2], [1, float("nan")])]:
        with pytest.raises(ValueError):
            fu_fast.gain(widths_, values)


def test_build_info():
    info = fu_fast.build_info()
    assert info["version"] == fu_fast.__version__
    assert "cpu" in info["backends"]
    assert isinstance(info["openmp"], bool) and info["openmp_threads"] >= 1
    if "cuda" in info["backends"]:
        assert info["cuda_archs"] and info["cuda_runtime_version"] > 0
    assert info["gpu_usable"] == torch.cuda.is_available()


@pytest.mark.parametrize("content, fragment", [
    ("", "is not a fu-fast analysis document"), ("{not json", "is not a fu-fast analysis document"),
    ("[1, 2, 3]", "schema 'list'"), ('{"schema": "fu-fast/analysis/1"}', "without the entry 'layers'"),
    ('{"schema": "fu-fast/analysis/1", "layers": 5}', "malformed"), (b"\xff\xfe\x00garbage", "not a fu-fast"),
])
def test_a_damaged_document_is_named_in_one_line(tmp_path, content, fragment):
    path = tmp_path / "analysis.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(fu_fast.FuFastError, match=fragment) as caught:
        fu_fast.AnalysisResult.load(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(fu_fast.FuFastError, match="cannot read"):
        fu_fast.AnalysisResult.load(tmp_path / "missing.json")


def test_a_version_1_document_reads_back_with_the_new_keys_empty(result, tmp_path):
    """Documents of fu-fast/analysis/1 lack what version 2 added; they still load."""
    doc = result.to_dict()
    doc["schema"] = "fu-fast/analysis/1"
    del doc["data"]["predictions"]
    for key in ("orders", "noise_levels"):
        del doc["settings"][key]
    for layer in doc["layers"]:
        for key in ("unit", "expanded_at", "selectivity", "orders", "noise"):
            del layer[key]
        del layer["redundancy"]["components_80"], layer["correlation"]["similar_units"]
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(doc))
    loaded = AnalysisResult.load(path)
    for name, layer in loaded.layers.items():
        assert layer.expanded_at == name and layer.selectivity is None and layer.components_80 is None
    assert loaded.to_dict()["schema"] == "fu-fast/analysis/2"
