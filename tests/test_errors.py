"""Bad input gives a clear FuFastError, never a wrong number."""

import pytest
import torch
from torch import nn

import fu_fast
from fu_fast import FuFastError

from conftest import mlp


class Residual(nn.Module):
    """out(fc(x) -> act + x): act's output is not a cut point (x skips around it)."""

    def __init__(self):
        super().__init__()
        self.fc, self.act, self.head = nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.act(self.fc(x)) + x)


class SharedActivation(nn.Module):
    """One ReLU module called twice, like torchvision's BasicBlock.relu."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.act, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


INPUTS = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("model,layers,message", [
    (mlp(8, 5, 3), ["nope"], "unknown layer 'nope'"),
    (SharedActivation(), ["act"], "layer 'act' runs 2 times"),
    (mlp(8, 5, 3), ["0.weight"], "unknown layer"),
])
def test_bad_layers_are_named(model, layers, message):
    with pytest.raises(FuFastError, match=message):
        fu_fast.analyze(model, INPUTS.to(next(model.parameters()).dtype), layers=layers)


def test_default_layers_skip_non_cut_points_and_say_when_none_is_left():
    residual = Residual()
    with pytest.raises(FuFastError, match="no analysable layers"):
        fu_fast.analyze(residual, INPUTS)
    assert list(fu_fast.analyze(mlp(8, 5, 3), INPUTS).layers) == ["1"]


def test_empty_data():
    with pytest.raises(FuFastError, match="empty"):
        fu_fast.analyze(mlp(8, 5, 3), torch.empty(0, 8))
    empty = torch.utils.data.TensorDataset(torch.empty(0, 8))
    with pytest.raises(FuFastError, match="empty"):
        fu_fast.analyze(mlp(8, 5, 3), empty)


def test_nan_activations_and_weights():
    bad = INPUTS.clone().double()
    bad[2, 2] = float("nan")   # in the probe rows on which the layers are found (engine.PROBE_ROWS)
    with pytest.raises(FuFastError, match="module '0' produced NaN or infinite activations"):
        fu_fast.analyze(mlp(8, 5, 3), bad)
    bad = INPUTS.clone().double()
    bad[7, 2] = float("nan")   # past the probe, in the first batch: found in the moments, named by layer
    with pytest.raises(FuFastError, match="layer '1' produced NaN or infinite activations"):
        fu_fast.analyze(mlp(8, 5, 3), bad)
    later = torch.cat([INPUTS.double()] * 10)
    later[150, 0] = float("nan")  # in a later batch than the probe
    with pytest.raises(FuFastError, match="layer '1' produced NaN or infinite activations"):
        fu_fast.analyze(mlp(8, 5, 3), later, batch_size=64)
    model = mlp(8, 5, 3)
    with torch.no_grad():
        model[2].weight[0, 0] = float("inf")
    with pytest.raises(FuFastError, match=r"weights contain NaN or infinite values \(in '2.weight'\)"):
        fu_fast.analyze(model, INPUTS.double())


@pytest.mark.parametrize("settings,message", [
    ({"tolerance": 1.0}, "tolerance"), ({"pca_tolerance": -0.1}, "pca_tolerance"),
    ({"repeats": 0}, "repeats"), ({"levels": 1}, "levels"), ({"levels": [0.5, 1.0]}, "levels"),
    ({"unit": "pixel"}, "unit must be one of auto, position, channel"), ({"sample_cap": 1}, "sample_cap"),
    ({"batch_size": 0}, "batch_size"), ({"batch_size": -3}, "batch_size must be a positive integer"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer"),
    ({"levels": 2.5}, "levels must be an integer"), ({"levels": "21"}, "levels must be an integer"),
    ({"repeats": 2.5}, "repeats must be a positive integer"), ({"repeats": True}, "repeats must be a positive integer"),
    ({"sample_cap": 1e4}, "sample_cap must be an integer"), ({"tolerance": "0.2"}, "tolerance must be a number"),
    ({"layers": ["1", "1"]}, "layer '1' is named more than once"),
    ({"device": "nonsense"}, "unknown device 'nonsense'"), ({"device": "meta"}, "device 'meta' is not supported"),
    pytest.param({"device": "cuda"}, "device 'cuda' asked for, but no CUDA GPU is usable here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is usable here")),
    pytest.param({"device": "cuda:1"}, "device 'cuda:1' asked for",
                 marks=pytest.mark.skipif(torch.cuda.device_count() > 1, reason="a second GPU is usable here")),
])
def test_bad_settings(settings, message):
    with pytest.raises(FuFastError, match=message):
        fu_fast.analyze(mlp(8, 5, 3), INPUTS.double(), **settings)


def test_models_that_do_not_return_logits_or_reject_the_data():
    with pytest.raises(FuFastError, match=r"logits must be \(batch, classes\) or \(batch, tokens, classes\), "
                                          r"got \(\d+, 2, 1, 2\)"):
        fu_fast.analyze(nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Unflatten(1, (2, 1, 2))), INPUTS, layers=["1"])
    with pytest.raises(FuFastError, match="the model failed on the data"):
        fu_fast.analyze(mlp(8, 5, 3), torch.randn(4, 9).double())
    with pytest.raises(FuFastError, match="data must be a tensor"):
        fu_fast.analyze(mlp(8, 5, 3), [1, 2, 3])


def test_loader_that_drops_examples_is_counted_consistently():
    dataset = torch.utils.data.TensorDataset(INPUTS.double())
    loader = torch.utils.data.DataLoader(dataset, batch_size=6, drop_last=True)
    assert fu_fast.analyze(mlp(8, 5, 3), loader).data["examples"] == 18


def test_numpy_integers_are_settings_like_any_other():
    import numpy as np

    result = fu_fast.analyze(mlp(8, 5, 3), INPUTS.double(), levels=np.int64(5), repeats=np.int64(2),
                             batch_size=np.int64(7))
    assert result.settings["levels"] == [0.0, 0.25, 0.5, 0.75, 1.0] and type(result.settings["repeats"]) is int


def test_a_shuffling_loader_is_refused():
    """The position sample for redundancy is drawn over example indices: the data must come in
    the same order every time."""
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(INPUTS.double()), batch_size=6, shuffle=True)
    with pytest.raises(FuFastError, match="shuffles its data"):
        fu_fast.analyze(mlp(8, 5, 3), loader)


def test_activations_too_large_for_float64_name_the_layer():
    model = mlp(8, 5, 3)
    with torch.no_grad():
        model[0].weight.mul_(1e160)
    with pytest.raises(FuFastError, match=r"^layer '1': its activations are too large for float64 sums"):
        fu_fast.analyze(model, INPUTS.double())
    with torch.no_grad():
        model[0].weight.div_(1e20)      # 1e140: squares still fit; the eigendecomposition is scaled
    assert fu_fast.analyze(model, INPUTS.double()).layers["1"].components >= 1
