"""The paper's Section 3 constructions, whose answers are known by construction.

From a narrow one-hidden-layer MLP with h hidden units, build 2h-unit networks that
compute exactly the same function:
  * zero-weight copy: the hidden units are duplicated and the copies' outgoing weights are 0;
  * weight balancing: the hidden units are duplicated, the original's outgoing weights get a
    class-dependent offset b_c and the copy's get -b_c (one shared offset would shift every
    logit equally and change no label; docs/definitions.md).
Both add exactly h redundant units (the copies are linear combinations of the originals).
Prunability is statistical: the zero-weight copy doubles the prunable units in expectation
(mean curves over many repeats agree at every fraction p), and balancing with a large
offset makes them collapse (ablating an original without its copy moves the logits by
b_c * a_j).
"""

import numpy as np
import pytest
import torch

import fu_fast
from fu_fast.analysis.ablation import prunable_fraction
from fu_fast.analysis.masks import level_grid

from conftest import mlp

HIDDEN = 64


def widened(narrow, outgoing, outgoing_copy):
    fc, out = narrow[0], narrow[2]
    wide = mlp(fc.in_features, 2 * fc.out_features, out.out_features)
    with torch.no_grad():
        wide[0].weight.copy_(torch.cat([fc.weight, fc.weight]))
        wide[0].bias.copy_(torch.cat([fc.bias, fc.bias]))
        wide[2].weight.copy_(torch.cat([outgoing, outgoing_copy], dim=1))
        wide[2].bias.copy_(out.bias)
    return wide


def zero_weight_copy(narrow):
    return widened(narrow, narrow[2].weight, torch.zeros_like(narrow[2].weight))


def weight_balanced(narrow, offset=100.0):
    classes = narrow[2].out_features
    b = offset * torch.randn(classes, 1, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    b = b.expand(-1, HIDDEN)
    return widened(narrow, narrow[2].weight + b, -b)


def setup(seed):
    narrow = mlp(32, HIDDEN, 10, seed=seed)
    inputs = torch.randn(2000, 32, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    return narrow, inputs


@pytest.mark.parametrize("construct", [zero_weight_copy, weight_balanced])
def test_duplicated_units_add_exactly_h_redundant_units(construct):
    narrow, inputs = setup(seed=0)
    wide = construct(narrow)
    with torch.no_grad():  # the constructions compute the same function
        torch.testing.assert_close(wide(inputs), narrow(inputs), rtol=1e-9, atol=1e-9)
    a = fu_fast.analyze(narrow, inputs, layers=["1"], repeats=1).layers["1"]
    b = fu_fast.analyze(wide, inputs, layers=["1"], repeats=1).layers["1"]
    assert (a.units, b.units) == (HIDDEN, 2 * HIDDEN)
    assert b.components == a.components
    assert b.redundant_units == a.redundant_units + HIDDEN


def test_zero_weight_copy_doubles_prunable_units_in_expectation():
    # 60 repeats per network: across 4 seeds the two mean curves stayed within 0.045 of
    # each other at every p and the prunable-unit ratio within 1.78-2.09.
    narrow, inputs = setup(seed=0)
    wide = zero_weight_copy(narrow)
    a = fu_fast.analyze(narrow, inputs, layers=["1"], repeats=60, seed=1).layers["1"]
    b = fu_fast.analyze(wide, inputs, layers=["1"], repeats=60, seed=2).layers["1"]
    mean_a, mean_b = np.mean(a.curves, axis=0), np.mean(b.curves, axis=0)
    assert np.abs(mean_a - mean_b).max() < 0.05
    grid = level_grid(21)
    units_a = prunable_fraction(grid, list(mean_a), 0.2) * HIDDEN
    units_b = prunable_fraction(grid, list(mean_b), 0.2) * 2 * HIDDEN
    assert 1.6 < units_b / units_a < 2.4


@pytest.mark.parametrize("seed", [0, 1])
def test_weight_balancing_makes_prunable_units_collapse(seed):
    narrow, inputs = setup(seed)
    wide = weight_balanced(narrow)
    a = fu_fast.analyze(narrow, inputs, layers=["1"], seed=seed).layers["1"]
    b = fu_fast.analyze(wide, inputs, layers=["1"], seed=seed).layers["1"]
    assert b.prunable_units < a.prunable_units / 3
    assert b.curves[0][1] < 0.5  # ablating 5% of the units already changes most labels
