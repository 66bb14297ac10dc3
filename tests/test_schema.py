"""docs/result.schema.json describes every result document the package writes (docs/result-format.md).

Each kind of document (linear and conv layers, unit=position and unit=channel, a dead layer, a
normalised result, a document saved and loaded back, and the file `fu-fast analyze --out` writes)
validates against the schema, and the schema rejects a document with a field removed or mistyped.
"""

import copy
import json
from pathlib import Path

import pytest
import torch

jsonschema = pytest.importorskip(
    "jsonschema", reason="validating result documents needs the jsonschema package (pip install jsonschema)")

import fu_fast  # noqa: E402
from fu_fast.analysis.result import SCHEMA, AnalysisResult  # noqa: E402

from conftest import mlp, small_cnn  # noqa: E402

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "docs" / "result.schema.json"


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def check(validator, document: dict) -> None:
    """The document validates, and its arrays have the shapes the schema cannot express."""
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    assert document["schema"] == SCHEMA
    settings = document["settings"]
    for layer in document["layers"]:
        curves = layer["prunability"]["curves"]
        assert len(curves) == settings["repeats"]
        assert all(len(row) == len(settings["levels"]) for row in curves)
        red = layer["redundancy"]
        assert len(red["explained_variance_ratio"]) == layer["units"]
        assert red["components"] + red["redundant_units"] == layer["units"]


def roundtrip(document: dict) -> dict:
    """The document as a reader of the JSON file sees it."""
    return json.loads(json.dumps(document, allow_nan=False))


def test_linear_layer_with_labels(validator):
    gen = torch.Generator().manual_seed(0)
    model = mlp(10, 24, 3, dtype=torch.float32)
    inputs = torch.randn(64, 10, generator=gen)
    labels = torch.randint(3, (64,), generator=gen)
    doc = roundtrip(fu_fast.analyze(model, (inputs, labels), trial=1).to_dict())
    check(validator, doc)
    assert doc["layers"][0]["kind"] == "linear" and doc["model"]["accuracy"] is not None
    assert doc["settings"]["precision"] == "fp32" and doc["trial"] == 1


@pytest.mark.parametrize("unit", ["position", "channel"])
def test_conv_layers(validator, unit):
    model = small_cnn(channels=4, seed=1)
    inputs = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    doc = roundtrip(fu_fast.analyze(model, inputs, unit=unit, sample_cap=200, levels=[0, 0.25, 0.5, 1],
                                    repeats=2).to_dict())
    check(validator, doc)
    assert {layer["kind"] for layer in doc["layers"]} == {"conv"}
    first = doc["layers"][0]
    assert first["ablation_units"] == (4 * 8 * 8 if unit == "position" else 4)
    assert first["redundancy"]["samples"] == 200
    assert doc["model"]["accuracy"] is None and doc["settings"]["precision"] == "fp64"


def test_dead_layer(validator):
    model = mlp(6, 8, 2, dtype=torch.float64)
    with torch.no_grad():   # the hidden ReLU never fires: no unit varies
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)
    doc = roundtrip(fu_fast.analyze(model, torch.randn(20, 6, dtype=torch.float64)).to_dict())
    check(validator, doc)
    layer = doc["layers"][0]
    assert layer["correlation"] == {"mean_abs_r": None, "abs_r_quantiles": None, "similar_units": None}
    assert layer["redundancy"]["components"] == 0 and layer["redundancy"]["redundant_units"] == 8


def test_normalised_result_saved_and_loaded(validator, tmp_path):
    inputs = torch.randn(40, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    narrow = fu_fast.analyze(mlp(10, 8, 2, seed=3), inputs, model_info={"name": "mlp", "width": 1.0},
                             data_info={"name": "noise", "split": "test"}, trial=0)
    wide = fu_fast.analyze(mlp(10, 32, 2, seed=4), inputs)
    path = narrow.normalize(wide).save(tmp_path / "analysis.json")
    written = json.loads(path.read_text())
    check(validator, written)
    assert written["summary"]["prunability"] is not None and written["layers"][0]["reference_units"] == 32
    loaded = AnalysisResult.load(path).to_dict()
    check(validator, roundtrip(loaded))
    assert loaded == written


def test_document_of_the_command_line(validator, tmp_path):
    from typer.testing import CliRunner

    from fu_fast.cli.app import app

    out = tmp_path / "mlp.json"
    result = CliRunner().invoke(app, ["analyze", "--model", "mlp", "--width", "0.25", "--limit", "50", "-q",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    check(validator, doc)
    assert doc["model"]["name"] == "mlp" and doc["data"]["examples"] == 50   # on a GPU machine it runs there


def _drop(path):
    def mutate(doc):
        *parents, last = path
        target = doc
        for key in parents:
            target = target[key]
        del target[last]
    return mutate


def _set(path, value):
    def mutate(doc):
        *parents, last = path
        target = doc
        for key in parents:
            target = target[key]
        target[last] = value
    return mutate


BROKEN = {
    "required field removed": _drop(["layers", 0, "prunability", "prunable_fraction"]),
    "curve value is a string": _set(["layers", 0, "prunability", "curves", 0, 1], "x"),
    "curves not an array of arrays": _set(["layers", 0, "prunability", "curves"], [1.0, 0.9]),
    "fraction above 1": _set(["layers", 0, "prunability", "prunable_fraction"], 1.5),
    "count is a float": _set(["layers", 0, "units"], 8.5),
    "quantile missing": _drop(["layers", 0, "correlation", "abs_r_quantiles", "0.5"]),
    "unknown key": _set(["extra"], 1),
    "unknown unit": _set(["settings", "unit"], "neuron"),
    "gpu kernels on the cpu": _set(["build", "kernels"], "native"),
    "wrong schema version": _set(["schema"], "fu-fast/analysis/3"),
}


@pytest.fixture(scope="module")
def valid_document():
    inputs = torch.randn(30, 10, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return roundtrip(fu_fast.analyze(mlp(10, 8, 2, seed=5), inputs).to_dict())


@pytest.mark.parametrize("how", list(BROKEN))
def test_broken_documents_fail(validator, valid_document, how):
    check(validator, valid_document)
    broken = copy.deepcopy(valid_document)
    BROKEN[how](broken)
    assert not validator.is_valid(broken)


@pytest.mark.parametrize("kernels", ["native", "cupy", "torch"])
def test_gpu_build_records_validate(validator, valid_document, kernels):
    """What an analysis on a GPU records (checked here without one)."""
    doc = copy.deepcopy(valid_document)
    doc["build"].update(backend="cuda", kernels=kernels)
    doc["settings"].update(device="cuda:0", precision="bf16")
    check(validator, doc)
    doc["build"]["kernels"] = "cpu"
    assert not validator.is_valid(doc)


def test_documents_from_before_build_kernels_still_validate(validator, valid_document):
    """build.kernels came after the first documents of this schema version: it is optional."""
    doc = copy.deepcopy(valid_document)
    del doc["build"]["kernels"]
    validator.validate(doc)


def test_a_document_with_skipped_layers_validates(validator, tmp_path):
    class SharedActivationModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.act, self.pool_act, self.head = (torch.nn.Linear(4, 6), torch.nn.GELU(), torch.nn.ReLU(),
                                                               torch.nn.Linear(6, 3))

        def forward(self, x):
            return self.head(self.pool_act(self.act(self.act(self.embed(x))).mean(dim=1)))

    result = fu_fast.analyze(SharedActivationModel(), torch.randn(12, 5, 4, generator=torch.Generator().manual_seed(0)))
    doc = result.to_dict()
    assert doc["skipped_layers"][0]["layer"] == "act"
    validator.validate(doc)
    doc["skipped_layers"] = [{"layer": "act"}]
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(doc)
