"""Robustness to activation noise: the engine's curves equal a naive path that adds the same keyed
noise (fu_fast.reference.expand_noise) in a hook, one full forward per level and repeat."""

import numpy as np
import pytest
import torch
from torch import nn

import fu_fast
from fu_fast import FuFastError, reference
from fu_fast.analysis import noise

LEVELS = [0.0, 0.5, 1.0, 2.0, 4.0]


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4)).double().eval()


X = torch.randn(60, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def naive_curves(model, module, x, unit_std, inner, repeats, batch):
    curves = []
    with torch.inference_mode():
        for r in range(repeats):
            curve = []
            for index, level in enumerate(LEVELS):
                agree = 0
                for start in range(0, len(x), batch):
                    xb = x[start:start + batch]
                    base = model(xb).argmax(dim=1)
                    key = noise.noise_key(0, "1", r, index)

                    def hook(_m, _i, output, key=key, level=level, start=start):
                        return reference.expand_noise(output, [key], [level], unit_std, inner, start)

                    handle = module.register_forward_hook(hook)
                    agree += int((model(xb).argmax(dim=1) == base).sum())
                    handle.remove()
                curve.append(agree / len(x))
            curves.append(curve)
    return curves


def test_noise_curves_equal_the_naive_path_and_do_not_depend_on_the_batch_size():
    model = mlp()
    result = fu_fast.analyze(model, X, layers=["1"], noise_levels=LEVELS, repeats=2, levels=3, batch_size=16)
    record = result.layers["1"].noise
    with torch.inference_mode():
        hidden = model[1](model[0](X)).numpy()
    unit_std = torch.from_numpy(hidden.std(axis=0, ddof=1))
    assert record["levels"] == LEVELS and len(record["curves"]) == 2
    assert record["curves"] == naive_curves(model, model[1], X, unit_std, 1, 2, 16)
    assert record["curves"][0][0] == 1.0 and min(record["curves"][0]) < 1.0     # noise changes labels
    expected = max(noise.tolerance_level(tuple(LEVELS), c, 0.2) for c in record["curves"])
    assert record["tolerance_level"] == pytest.approx(expected)
    other = fu_fast.analyze(model, X, layers=["1"], noise_levels=LEVELS, repeats=2, levels=3, batch_size=7)
    assert other.layers["1"].noise == record
    assert result.settings["noise_levels"] == LEVELS and result.timing["passes_over_data"] == 2


def test_noise_on_a_conv_layer_uses_each_channels_std_at_every_position():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 5)).double().eval()
    x = torch.randn(30, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    result = fu_fast.analyze(model, x, layers=["1"], noise_levels=LEVELS, repeats=1, levels=3, unit="channel",
                             batch_size=10)
    with torch.inference_mode():
        hidden = model[1](model[0](x))
    channel_std = torch.from_numpy(hidden.permute(1, 0, 2, 3).reshape(3, -1).numpy().std(axis=1, ddof=1))
    assert result.layers["1"].noise["curves"] == naive_curves(model, model[1], x, channel_std, 16, 1, 10)


def test_noise_levels_are_checked_in_one_line():
    for levels, message in (([0.5, 1.0], "start at 0"), ([0.0, 1.0, 1.0], "increase strictly"), ([0.0], "at least two"),
                            ("0,1", "must be a list"), ([0.0, float("nan")], "finite")):
        with pytest.raises(FuFastError, match=message):
            fu_fast.analyze(mlp(), X, layers=["1"], noise_levels=levels)


def test_the_tolerance_level_interpolates_the_first_crossing():
    assert noise.tolerance_level((0.0, 1.0, 2.0), [1.0, 0.9, 0.7], 0.2) == pytest.approx(1.5)
    assert noise.tolerance_level((0.0, 1.0), [1.0, 0.95], 0.2) == 1.0
    assert np.isclose(noise.tolerance_level((0.0, 2.0), [1.0, 0.0], 0.2), 0.4)
