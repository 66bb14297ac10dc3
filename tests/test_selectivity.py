"""Class selectivity, similar units and the 80% component count, against NumPy on the layer's
activations (Morcos et al.'s selectivity; the authors' |r| >= 0.5 similarity count)."""

import numpy as np
import pytest
import torch
from torch import nn

import fu_fast
from fu_fast.analysis import pca


def model_and_data(classes=4, examples=120):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, classes)).double().eval()
    x = torch.randn(examples, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, classes, (examples,), generator=torch.Generator().manual_seed(2))
    return model, x, labels


def numpy_selectivity(activations: np.ndarray, classes: np.ndarray) -> np.ndarray:
    means = np.stack([activations[classes == c].mean(axis=0) for c in np.unique(classes)])
    values = []
    for unit in means.T:
        top = unit.max()
        rest = (unit.sum() - top) / (len(unit) - 1)
        values.append(np.nan if unit.min() < 0 or top + rest == 0 else (top - rest) / (top + rest))
    return np.asarray(values)


def hidden(model, x):
    with torch.inference_mode():
        return model[1](model[0](x)).numpy()


@pytest.mark.parametrize("with_labels", [True, False])
def test_selectivity_equals_numpy_by_true_or_predicted_labels(with_labels):
    model, x, labels = model_and_data()
    data = (x, labels) if with_labels else x
    layer = fu_fast.analyze(model, data, layers=["1"], repeats=1, levels=3, batch_size=32).layers["1"]
    with torch.inference_mode():
        classes = labels.numpy() if with_labels else model(x).argmax(dim=1).numpy()
    expected = numpy_selectivity(hidden(model, x), classes)
    defined = expected[~np.isnan(expected)]
    assert layer.selectivity["labels"] == ("true" if with_labels else "predicted")
    assert layer.selectivity["units"] == len(defined) > 0
    assert layer.selectivity["mean"] == pytest.approx(defined.mean(), rel=1e-12)
    assert layer.selectivity["quantiles"]["0.5"] == pytest.approx(np.quantile(defined, 0.5), rel=1e-12)


def test_units_with_negative_class_means_have_no_selectivity():
    sums = np.array([[1.0, -2.0, 0.0], [3.0, 1.0, 0.0]])
    result = pca.selectivity(sums, np.array([1.0, 1.0]))
    assert result.values[0] == pytest.approx((3 - 1) / (3 + 1))
    assert result.values[1] is None and result.values[2] is None     # negative; all zero
    assert pca.selectivity(sums, np.array([2.0, 0.0])) is None         # one class seen


def test_labels_outside_the_models_classes_count_nowhere():
    model, x, labels = model_and_data()
    wrong = labels.clone()
    wrong[:10] = 9                                   # the model has 4 classes
    layer = fu_fast.analyze(model, (x, wrong), layers=["1"], repeats=1, levels=3).layers["1"]
    keep = np.arange(len(x)) >= 10
    expected = numpy_selectivity(hidden(model, x)[keep], labels.numpy()[keep])
    assert layer.selectivity["mean"] == pytest.approx(np.nanmean(expected), rel=1e-12)


def test_similar_units_and_components_for_80_percent_equal_numpy():
    model, x, _ = model_and_data()
    layer = fu_fast.analyze(model, x, layers=["1"], repeats=1, levels=3).layers["1"]
    activations = hidden(model, x)
    live = activations.std(axis=0) > 0
    r = np.abs(np.corrcoef(activations[:, live], rowvar=False))
    np.fill_diagonal(r, 0.0)
    assert layer.similar_units == int((r.max(axis=1) >= 0.5).sum())
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(activations, rowvar=False)))[::-1]
    cumulative = np.cumsum(eigenvalues) / eigenvalues.sum()
    assert layer.components_80 == int(np.argmax(cumulative >= 0.8)) + 1
    assert layer.components_80 <= layer.components


def test_a_duplicated_unit_is_similar_and_token_logits_have_no_selectivity():
    model, x, _ = model_and_data()
    with torch.no_grad():
        model[0].weight[1] = model[0].weight[0]
        model[0].bias[1] = model[0].bias[0]
    layer = fu_fast.analyze(model, x, layers=["1"], repeats=1, levels=3).layers["1"]
    assert layer.similar_units >= 2
    tokens = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    result = fu_fast.analyze(tokens, torch.randn(10, 5, 6), layers=["1"], repeats=1, levels=3)
    assert result.layers["1"].selectivity is None
