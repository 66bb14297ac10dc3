"""A module that runs several times per forward pass (torchvision's BasicBlock.relu) analysed at
one of its calls, named "module@call": curves equal the naive path's with the same keys."""

import numpy as np
import pytest
import torch
from torch import nn

import fu_fast
from fu_fast import FuFastError, reference
from fu_fast.analysis import masks


class Block(nn.Module):
    """A residual block with one ReLU module called twice, as torchvision's BasicBlock: relu@0
    inside the block (not a cut point: the shortcut skips it), relu@1 the block's output."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.conv1(x))) + x)


def network():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Block(4), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 5)).double().eval()


INPUTS = torch.randn(30, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("unit", ["position", "channel"])
def test_one_call_of_a_shared_module_equals_the_naive_path(unit):
    model = network()
    result = fu_fast.analyze(model, INPUTS, layers=["1.relu@1"], repeats=2, levels=11, unit=unit, batch_size=8)
    layer = result.layers["1.relu@1"]
    assert layer.units == 4 and layer.ablation_units == (4 * 36 if unit == "position" else 4)
    grid = masks.level_grid(11)
    keys = [masks.mask_key(0, "1.relu@1", r) for r in range(2) for _ in grid]
    thresholds = [masks.threshold(p, layer.ablation_units) for _ in range(2) for p in grid]
    counts = reference.naive_ablation_counts(model, model[1].relu, INPUTS.split(8), keys, thresholds,
                                             36 if unit == "channel" else 1, call=1)
    assert np.array_equal(np.asarray(layer.curves), (counts / len(INPUTS)).reshape(2, 11))
    # The second call's output is the block's: the same redundancy.
    block = fu_fast.analyze(model, INPUTS, layers=["1"], repeats=2, levels=11, unit=unit, batch_size=8).layers["1"]
    assert block.components == layer.components and block.samples == layer.samples


@pytest.mark.parametrize("name, message", [
    ("1.relu", "runs 2 times per forward pass; name a module that runs once, or one of its calls: "
               "'1.relu@0' ... '1.relu@1'"),
    ("1.relu@2", "'1.relu' runs 2 time(s) per forward pass (calls @0 ... @1)"),
    ("1.relu@first", "after '@' comes the call's number"),
])
def test_calls_are_named_and_checked(name, message):
    with pytest.raises(FuFastError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        fu_fast.analyze(network(), INPUTS, layers=[name])


@pytest.mark.parametrize("unit", ["position", "channel"])
def test_a_call_inside_the_block_equals_the_naive_path(unit):
    """relu@0 is not a cut point (the shortcut skips it): its copies begin at the stem conv's output."""
    model = network()
    result = fu_fast.analyze(model, INPUTS, layers=["1.relu@0"], repeats=2, levels=11, unit=unit, batch_size=8)
    layer = result.layers["1.relu@0"]
    assert layer.expanded_at == "0"
    grid = masks.level_grid(11)
    keys = [masks.mask_key(0, "1.relu@0", r) for r in range(2) for _ in grid]
    thresholds = [masks.threshold(p, layer.ablation_units) for _ in range(2) for p in grid]
    counts = reference.naive_ablation_counts(model, model[1].relu, INPUTS.split(8), keys, thresholds,
                                             36 if unit == "channel" else 1, call=0)
    assert np.array_equal(np.asarray(layer.curves), (counts / len(INPUTS)).reshape(2, 11))


class VolumeClassifier(nn.Module):
    """An activation of shape (batch, C, D, H, W) beside usable ones: default discovery skips it,
    saying why, and analyses the rest (a (batch, tokens, features) one among them)."""

    def __init__(self):
        super().__init__()
        self.embed, self.act, self.volume_act = nn.Linear(4, 6), nn.GELU(), nn.ReLU()
        self.pool_act, self.head = nn.ReLU(), nn.Linear(6, 3)

    def forward(self, x):                        # x: (batch, 5 tokens, 4)
        h = self.act(self.embed(x))
        volume = self.volume_act(h.reshape(-1, 1, 5, 3, 2))
        return self.head(self.pool_act((h + volume.reshape(h.shape)).mean(dim=1)))


def test_default_discovery_skips_what_it_cannot_use_and_says_why(tmp_path):
    x = torch.randn(20, 5, 4, generator=torch.Generator().manual_seed(2))
    result = fu_fast.analyze(VolumeClassifier(), x)
    assert list(result.layers) == ["act", "pool_act"] and result.layers["act"].kind == "token"
    assert result.skipped_layers == [{"layer": "volume_act", "reason": "outputs (1, 5, 3, 2); expected (N, C), "
                                                                       "(N, T, D) or (N, C, H, W) tensors"}]
    path = result.save(tmp_path / "r.json")
    assert fu_fast.AnalysisResult.load(path).skipped_layers == result.skipped_layers
    with pytest.raises(FuFastError, match=r"layer 'volume_act' outputs \(1, 5, 3, 2\)"):   # named, it is an error
        fu_fast.analyze(VolumeClassifier(), x, layers=["volume_act"])
    assert "skipped_layers" not in fu_fast.analyze(network(), INPUTS, layers=["1"]).to_dict()
