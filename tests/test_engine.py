"""The one-pass engine against cases whose answer is known, and against the naive path."""

import numpy as np
import pytest
import torch

import fu_fast
from fu_fast import reference
from fu_fast.analysis import ablation, masks
from fu_fast.analysis.pca import redundancy

from conftest import mlp, small_cnn


def naive_curves(model, layer_name, inputs, *, repeats=3, levels=21, seed=0, unit="position", batch=50):
    """Curves by one full forward per mask (materialised masks), the paper's way."""
    module = dict(model.named_modules())[layer_name]
    with torch.inference_mode():
        shape = []
        handle = module.register_forward_hook(lambda m, i, o: shape.append(tuple(o.shape[1:])))
        model(inputs[:1])
        handle.remove()
    channels = shape[0][0]
    spatial = int(np.prod(shape[0][1:])) if len(shape[0]) == 3 else 1
    n = channels * spatial if unit == "position" else channels
    inner = spatial if unit == "channel" else 1
    grid = masks.level_grid(levels)
    keys = [masks.mask_key(seed, layer_name, r) for r in range(repeats) for _ in grid]
    thresholds = [masks.threshold(p, n) for _ in range(repeats) for p in grid]
    batches = [inputs[i:i + batch] for i in range(0, len(inputs), batch)]
    counts = reference.naive_ablation_counts(model.eval(), module, batches, keys, thresholds, inner)
    return (counts / len(inputs)).reshape(repeats, len(grid)).tolist()


def test_curve_endpoints_are_known():
    """a(0) = 1; a(1) is the share of base labels equal to the label of the ablated layer:
    with the hidden layer zeroed an MLP outputs its output bias, whose argmax is fixed."""
    model = mlp(12, 40, 7, seed=3)
    inputs = torch.randn(999, 12, generator=torch.Generator().manual_seed(1))
    result = fu_fast.analyze(model, inputs, layers=["1"], batch_size=100)
    layer = result.layers["1"]
    with torch.no_grad():
        base = model(inputs.double()).argmax(dim=1)
        ablated_label = int(model[2].bias.argmax())
    for curve in layer.curves:
        assert curve[0] == 1.0
        assert curve[-1] == pytest.approx(float((base == ablated_label).double().mean()), abs=0)
    assert layer.ablation_units == layer.units == 40 and layer.kind == "linear"


@pytest.mark.parametrize("unit", ["position", "channel"])
def test_engine_curves_equal_the_naive_path(unit):
    model = small_cnn(channels=5, seed=1)
    inputs = torch.randn(120, 3, 9, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    result = fu_fast.analyze(model, inputs, layers=["1", "3"], unit=unit, batch_size=37, repeats=2)
    for name in ("1", "3"):
        assert result.layers[name].curves == naive_curves(model, name, inputs, repeats=2, unit=unit)


def test_linear_curves_equal_the_naive_path_in_float32():
    # float32 as users run it; the suffix is one Linear, whose rows do not interact.
    model = mlp(30, 50, 4, dtype=torch.float32, seed=5)
    inputs = torch.randn(300, 30, generator=torch.Generator().manual_seed(3))
    result = fu_fast.analyze(model, inputs, layers=["1"], batch_size=64)
    assert result.layers["1"].curves == naive_curves(model, "1", inputs)


def test_results_do_not_depend_on_batch_size():
    model = small_cnn(channels=4, seed=2)
    inputs = torch.randn(90, 3, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a = fu_fast.analyze(model, inputs, batch_size=90, sample_cap=500)
    b = fu_fast.analyze(model, inputs, batch_size=7, sample_cap=500)
    assert list(a.layers) == list(b.layers) == ["1", "3"]
    for name in a.layers:
        la, lb = a.layers[name], b.layers[name]
        assert la.curves == lb.curves
        assert (la.samples, la.components) == (lb.samples, lb.components)
        np.testing.assert_allclose(la.explained_variance_ratio, lb.explained_variance_ratio, atol=1e-12)


def test_the_expansion_buffer_is_one_allocation_in_the_layout_of_each_batch():
    buffer = ablation.ExpansionBuffer()
    big = buffer.copies_of(torch.zeros(5, 3, 4, 4), 6)
    assert big.shape == (30, 3, 4, 4) and big.is_contiguous()
    # A smaller batch (the last one) and a channels_last one reuse the same memory, in their layout.
    small = buffer.copies_of(torch.zeros(2, 3, 4, 4), 6)
    last = buffer.copies_of(torch.zeros(5, 3, 4, 4).to(memory_format=torch.channels_last), 6)
    assert small.shape == (12, 3, 4, 4) and small.data_ptr() == big.data_ptr() == last.data_ptr()
    assert last.shape == (30, 3, 4, 4) and not last.is_contiguous()
    assert last.is_contiguous(memory_format=torch.channels_last)
    # More copies need a new allocation; another dtype has its own, and the first one stays.
    grown = buffer.copies_of(torch.zeros(5, 3, 4, 4), 7)
    assert grown.shape == (35, 3, 4, 4)
    assert buffer.copies_of(torch.zeros(5, 3, dtype=torch.float64), 2).dtype == torch.float64
    assert buffer.copies_of(torch.zeros(5, 3, 4, 4), 7).data_ptr() == grown.data_ptr()


def test_conv_units_and_uncapped_redundancy_equal_numpy_pca():
    model = small_cnn(channels=6, seed=3)
    inputs = torch.randn(40, 3, 7, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    result = fu_fast.analyze(model, inputs, layers=["1"], sample_cap=40 * 49 + 1, batch_size=13)
    layer = result.layers["1"]
    assert (layer.kind, layer.units, layer.ablation_units) == ("conv", 6, 6 * 7 * 7)
    with torch.no_grad():
        activation = model[1](model[0](inputs))
    rows = activation.permute(0, 2, 3, 1).reshape(-1, 6).numpy()
    assert layer.samples == len(rows)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(rows, rowvar=False)))[::-1]
    cumulative = np.cumsum(eigenvalues) / eigenvalues.sum()
    k = int(np.argmax(cumulative >= 0.95)) + 1
    assert (layer.components, layer.redundant_units) == (k, 6 - k)
    np.testing.assert_allclose(layer.explained_variance_ratio, eigenvalues / eigenvalues.sum(), atol=1e-12)
    corr = np.abs(np.corrcoef(rows, rowvar=False)[np.triu_indices(6, 1)])
    assert layer.mean_abs_r == pytest.approx(corr.mean(), abs=1e-12)
    assert layer.abs_r_quantiles["0.5"] == pytest.approx(np.quantile(corr, 0.5), abs=1e-12)


def test_position_sample_is_capped_and_seeded():
    model = small_cnn(channels=3, seed=4)
    inputs = torch.randn(30, 3, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    a = fu_fast.analyze(model, inputs, layers=["1"], sample_cap=123, batch_size=8)
    b = fu_fast.analyze(model, inputs, layers=["1"], sample_cap=123, batch_size=30)
    assert a.layers["1"].samples == 123
    assert a.layers["1"].explained_variance_ratio == pytest.approx(b.layers["1"].explained_variance_ratio, abs=1e-12)


def test_redundancy_counts_dead_units_and_zero_variance():
    cov = np.diag([4.0, 1.0, 0.0, 0.0])
    r = redundancy(cov, 0.05)
    assert (r.components, r.redundant_units) == (2, 2)
    assert redundancy(np.zeros((3, 3)), 0.05).components == 0
    assert redundancy(np.zeros((3, 3)), 0.05).redundant_units == 3
    assert redundancy(np.eye(20), 0.05).components == 19  # 19/20 = 0.95 of the variance
    assert redundancy(np.eye(20), 0.0).components == 20


def test_model_is_left_as_found_and_seed_controls_masks():
    model = mlp(8, 16, 3, seed=6).train()
    model[2].eval()
    inputs = torch.randn(50, 8, generator=torch.Generator().manual_seed(7))
    before = [p.clone() for p in model.parameters()]
    a = fu_fast.analyze(model, inputs, seed=1)
    assert [m.training for m in model] == [True, True, False]
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    assert all(not m._forward_hooks for m in model.modules())
    b = fu_fast.analyze(model, inputs, seed=1)
    c = fu_fast.analyze(model, inputs, seed=2)
    assert a.layers["1"].curves == b.layers["1"].curves
    assert a.layers["1"].curves != c.layers["1"].curves


def test_data_forms_give_the_same_result_and_labels_give_accuracy():
    model = mlp(6, 10, 3, seed=7)
    inputs = torch.randn(64, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    labels = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(9))
    dataset = torch.utils.data.TensorDataset(inputs, labels)
    results = [fu_fast.analyze(model, inputs),
               fu_fast.analyze(model, (inputs, labels)),
               fu_fast.analyze(model, dataset, batch_size=10),
               fu_fast.analyze(model, torch.utils.data.DataLoader(dataset, batch_size=9))]
    assert all(r.layers["1"].curves == results[0].layers["1"].curves for r in results)
    with torch.no_grad():
        accuracy = float((model(inputs).argmax(1) == labels).double().mean())
    assert results[0].model["accuracy"] is None
    assert all(r.model["accuracy"] == pytest.approx(accuracy) for r in results[1:])


def test_prunable_fraction_interpolates_the_first_crossing():
    from fu_fast.analysis.ablation import prunable_fraction
    grid = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert prunable_fraction(grid, [1.0, 0.9, 0.7, 0.85, 0.1], 0.2) == pytest.approx(0.25 + 0.25 * 0.5)
    assert prunable_fraction(grid, [1.0, 1.0, 0.95, 0.9, 0.85], 0.2) == 1.0
    assert prunable_fraction(grid, [1.0, 0.8, 0.5, 0.2, 0.0], 0.2) == pytest.approx(0.25)


def test_prunable_units_take_the_max_over_repeats():
    model = mlp(10, 33, 4, seed=8)
    inputs = torch.randn(200, 10, generator=torch.Generator().manual_seed(10))
    result = fu_fast.analyze(model, inputs, repeats=4)
    from fu_fast.analysis.ablation import prunable_fraction
    layer = result.layers["1"]
    per_repeat = [prunable_fraction(result.settings["levels"], c, 0.2) for c in layer.curves]
    assert len(layer.curves) == 4 and layer.prunable_fraction == max(per_repeat)
    assert layer.prunable_units == pytest.approx(max(per_repeat) * 33)


def test_mask_chunking_to_a_memory_budget_changes_nothing():
    model = small_cnn(channels=4, seed=5)
    inputs = torch.randn(40, 3, 8, 8, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    whole = fu_fast.analyze(model, inputs, batch_size=20)
    seen = []
    chunked = fu_fast.analyze(model, inputs, batch_size=20, memory_budget=1,  # one mask per pass
                              progress=lambda done, total: seen.append((done, total)))
    assert all(whole.layers[n].curves == chunked.layers[n].curves for n in whole.layers)
    assert seen == [(20, 40), (40, 40)]


def test_channels_last_gives_the_same_result(generator):
    model = small_cnn()
    x = torch.randn(30, 3, 8, 8, generator=generator, dtype=torch.float64)
    for unit in ("position", "channel"):
        plain = fu_fast.analyze(model, x, unit=unit, repeats=2, batch_size=11)
        nhwc = fu_fast.analyze(model, x, unit=unit, repeats=2, batch_size=11, channels_last=True)
        for name in ("1", "3"):
            assert nhwc.layers[name].curves == plain.layers[name].curves
            assert nhwc.layers[name].redundant_units == plain.layers[name].redundant_units
            assert nhwc.layers[name].mean_abs_r == pytest.approx(plain.layers[name].mean_abs_r, rel=1e-12)


def test_precision_is_recorded_and_bf16_runs_in_bfloat16_with_close_curves(generator):
    model = small_cnn(dtype=torch.float32)
    x = torch.randn(64, 3, 8, 8, generator=generator)
    seen = []
    model[1].register_forward_hook(lambda _m, _i, output: seen.append(output.dtype))
    fp32 = fu_fast.analyze(model, x, repeats=2)
    tf32 = fu_fast.analyze(model, x, repeats=2, precision="tf32")     # no TF32 on the CPU: fp32 exactly
    assert set(seen) == {torch.float32}
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    bf16 = fu_fast.analyze(model, x, repeats=2, precision="bf16")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    assert torch.bfloat16 in seen
    assert [r.settings["precision"] for r in (fp32, tf32, bf16)] == ["fp32", "tf32", "bf16"]
    assert tf32.layers["3"].curves == fp32.layers["3"].curves
    for name in ("1", "3"):
        a, b = np.array(fp32.layers[name].curves), np.array(bf16.layers[name].curves)
        assert (b[:, 0] == 1.0).all()
        # bf16 keeps 8 bits of mantissa: a few labels flip, the curves stay close.
        assert np.abs(a - b).max() < 0.15


def test_precision_errors():
    with pytest.raises(fu_fast.FuFastError, match="precision must be one of"):
        fu_fast.analyze(mlp(4, 6, 3, dtype=torch.float32), torch.randn(8, 4), precision="fp8")
    with pytest.raises(fu_fast.FuFastError, match="needs a float32 model"):
        fu_fast.analyze(mlp(4, 6, 3), torch.randn(8, 4, dtype=torch.float64), precision="bf16")
