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
    (Residual(), ["act"], "layer 'act' is not a cut point"),
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
    bad[7, 2] = float("nan")
    with pytest.raises(FuFastError, match="module '0' produced NaN or infinite activations"):
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
    ({"unit": "pixel"}, "unit must be one of position, channel"), ({"sample_cap": 1}, "sample_cap"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_settings(settings, message):
    with pytest.raises(FuFastError, match=message):
        fu_fast.analyze(mlp(8, 5, 3), INPUTS.double(), **settings)


def test_models_that_do_not_return_logits_or_reject_the_data():
    with pytest.raises(FuFastError, match=r"must return \(batch, classes\) logits"):
        fu_fast.analyze(nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Unflatten(1, (2, 2))), INPUTS, layers=["1"])
    with pytest.raises(FuFastError, match="the model failed on the data"):
        fu_fast.analyze(mlp(8, 5, 3), torch.randn(4, 9).double())
    with pytest.raises(FuFastError, match="data must be a tensor"):
        fu_fast.analyze(mlp(8, 5, 3), [1, 2, 3])


def test_loader_that_drops_examples_is_counted_consistently():
    dataset = torch.utils.data.TensorDataset(INPUTS.double())
    loader = torch.utils.data.DataLoader(dataset, batch_size=6, drop_last=True)
    assert fu_fast.analyze(mlp(8, 5, 3), loader).data["examples"] == 18
