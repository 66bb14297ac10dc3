"""Any model at any layer: layers that are not cut points (masked copies made earlier), the
default layers of torchvision and PyTorch models (blocks, Inception modules, transformer layers),
(batch, tokens, features) activations and token logits. Every curve equals the naive path's
(one full forward per mask with a hook) for the same keys."""

import numpy as np
import pytest
import torch
from torch import nn

import fu_fast
from fu_fast import reference
from fu_fast.analysis import masks

tv_models = pytest.importorskip("torchvision.models")

GRID = masks.level_grid(6)
REPEATS = 2


def resnet18():
    torch.manual_seed(0)
    return tv_models.resnet18(weights=None, num_classes=10).eval()


IMAGES = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def module_of(model, name):
    module_name = name.partition("@")[0]
    call = int(name.partition("@")[2]) if "@" in name else None
    return dict(model.named_modules())[module_name], call


def check_equals_naive(model, inputs, names, unit, *, batch=8, features_last=False, predictions=None, **kwargs):
    result = fu_fast.analyze(model, inputs, layers=names, repeats=REPEATS, levels=GRID, unit=unit, batch_size=batch,
                             **kwargs)
    for name in names:
        layer = result.layers[name]
        module, call = module_of(model, name)
        keys = [masks.mask_key(0, name, r) for r in range(REPEATS) for _ in GRID]
        thresholds = [masks.threshold(p, layer.ablation_units) for _ in range(REPEATS) for p in GRID]
        inner = 1 if layer.ablation_units != layer.units else _per_unit(model, module, call, inputs[:1], layer.units)
        counts = reference.naive_ablation_counts(model, module, inputs.split(batch), keys, thresholds, inner, call,
                                                 features_last=features_last and inner > 1,
                                                 token_mask=kwargs.get("token_mask"))
        total = predictions if predictions is not None else len(inputs)
        assert np.array_equal(np.asarray(layer.curves), (counts / total).reshape(REPEATS, len(GRID))), name
    # Not a vacuous comparison: ablation changes labels somewhere. (Zeroing a block's last conv at
    # torchvision's initialisation changes nothing: bn2 maps 0 to 0 and the block returns its input.)
    assert any(layer.curves[0][-1] < 1.0 for layer in result.layers.values())
    return result


def _per_unit(model, module, call, probe, units):
    """Elements per ablation unit of a module's output (its numel / units)."""
    seen = []
    calls = [0]

    def hook(_m, _i, output):
        if call is None or calls[0] == call:
            seen.append(output[0].numel())
        calls[0] += 1

    handle = module.register_forward_hook(hook)
    with torch.inference_mode():
        model(probe)
    handle.remove()
    return seen[0] // units


INNER = ["layer1.0.conv1", "layer1.1.relu@0", "layer2.0.bn2", "layer3.1.conv2", "layer4.0.conv1"]


@pytest.mark.parametrize("unit", ["position", "channel"])
def test_inner_layers_of_a_torchvision_resnet18_equal_the_naive_path(unit):
    model = resnet18()
    result = check_equals_naive(model, IMAGES, INNER, unit)
    # The copies begin at the latest cut point before each layer: the stem's pooling or a block.
    assert {n: result.layers[n].expanded_at for n in INNER} == {
        "layer1.0.conv1": "maxpool", "layer1.1.relu@0": "layer1.0", "layer2.0.bn2": "layer1",
        "layer3.1.conv2": "layer3.0", "layer4.0.conv1": "layer3"}
    document = {layer["name"]: layer for layer in result.to_dict()["layers"]}
    assert document["layer2.0.bn2"]["expanded_at"] == "layer1"


def test_cut_points_and_inner_layers_analysed_together_equal_the_layers_analysed_alone():
    model = resnet18()
    together = fu_fast.analyze(model, IMAGES, layers=["layer1.0.conv1", "layer2", "layer3.0.relu@0"], repeats=2,
                               levels=GRID, batch_size=5)
    for name, layer in together.layers.items():
        alone = fu_fast.analyze(model, IMAGES, layers=[name], repeats=2, levels=GRID, batch_size=12).layers[name]
        assert layer.curves == alone.curves and layer.components == alone.components, name
    assert together.layers["layer2"].expanded_at == "layer2"


class ResidualMLP(nn.Module):
    """Residual MLP blocks, x + W2 relu(W1 x): inside a block nothing is a cut point."""

    def __init__(self, width=24, blocks=2, classes=5):
        super().__init__()
        self.stem = nn.Linear(10, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width))
                                    for _ in range(blocks))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def test_inner_layers_of_a_residual_mlp_equal_the_naive_path():
    torch.manual_seed(3)
    model = ResidualMLP().double().eval()
    x = torch.randn(40, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    result = check_equals_naive(model, x, ["blocks.0.1", "blocks.1.0", "blocks.1.2"], "position")
    # blocks.1's input, x + blocks.0(x), is computed by no module: its copies begin at the stem too.
    assert {name: layer.expanded_at for name, layer in result.layers.items()} == {
        "blocks.0.1": "stem", "blocks.1.0": "stem", "blocks.1.2": "stem"}


def count_forwards(model):
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def test_the_children_of_a_plain_sequential_are_cut_points_without_a_check():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4)).double().eval()
    x = torch.randn(30, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    assert check_equals_naive(model, x, ["1"], "position").layers["1"].expanded_at == "1"
    forwards = count_forwards(model[0])   # a hook on a child: the model's own forward is unchanged
    fu_fast.analyze(model, x, layers=["1"], batch_size=30)
    assert len(forwards) == 2   # the probe's and the one batch's: no forwards for a cut-point check


def test_a_hook_on_a_sequential_that_adds_a_path_around_its_children_is_found():
    """A forward hook on the model sees the input: x + f(x) makes no child a cut point."""
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 10)).double().eval()
    model.register_forward_hook(lambda _m, inputs, output: output + inputs[0])
    x = torch.randn(30, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    result = check_equals_naive(model, x, ["1"], "position")
    assert result.layers["1"].expanded_at is None   # the copies begin at the model input


def test_an_in_place_activation_inside_a_block_masks_a_copy_not_the_shortcut():
    """torchvision's ReLU(inplace=True) returns its input: masking it in place would also mask
    what the shortcut reads; the curves equal the naive path's, whose hook returns a new tensor."""
    model = resnet18()
    for block in (model.layer1[0], model.layer2[1]):
        assert block.relu.inplace
    check_equals_naive(model, IMAGES, ["layer1.0.relu@0", "layer2.1.relu@0"], "position")


def test_torchvision_resnet18_defaults_to_its_eight_blocks():
    result = fu_fast.analyze(resnet18(), IMAGES, repeats=1, levels=3)
    assert list(result.layers) == [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    assert all(layer.expanded_at == name for name, layer in result.layers.items())


def test_torchvision_inception_v3_defaults_to_its_mixed_modules():
    from fu_fast.analysis import layers as layer_lib

    torch.manual_seed(0)
    model = tv_models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=10).eval()
    x = torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        found, skipped = layer_lib.resolve(model, x, None, "auto")
    mixed = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
             "Mixed_7a", "Mixed_7b", "Mixed_7c"]
    assert [layer.name for layer in found] == mixed and skipped == []


class TransformerClassifier(nn.Module):
    """An nn.TransformerEncoder classifier (batch first): token features in, class logits out
    (or per-token logits)."""

    def __init__(self, activation, per_token=False, d_model=16, layers=2, classes=4):
        super().__init__()
        self.embed = nn.Linear(6, d_model)
        layer = nn.TransformerEncoderLayer(d_model, 2, 32, dropout=0.1, activation=activation, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)
        self.per_token = per_token

    def forward(self, x):
        h = self.encoder(self.embed(x))
        return self.head(h if self.per_token else h.mean(dim=1))


TOKENS = torch.randn(24, 7, 6, generator=torch.Generator().manual_seed(6))


def transformer(activation=None, per_token=False):
    torch.manual_seed(7)
    return TransformerClassifier(nn.GELU() if activation is None else activation, per_token).eval()


def test_transformer_defaults_are_each_layer_and_its_feed_forward_units():
    model = transformer()
    result = fu_fast.analyze(model, TOKENS, repeats=1, levels=3)
    assert list(result.layers) == ["encoder.layers.0.activation", "encoder.layers.0",
                                   "encoder.layers.1.activation", "encoder.layers.1"]
    hidden, output = result.layers["encoder.layers.0.activation"], result.layers["encoder.layers.0"]
    assert (hidden.kind, hidden.units, hidden.ablation_units, hidden.unit) == ("token", 32, 32, "channel")
    assert (output.kind, output.units) == ("token", 16)
    assert hidden.samples == len(TOKENS) * 7                  # every token a sample of the 32 units
    assert hidden.expanded_at == "encoder.layers.0.norm1"     # post-norm: the attention's output is a cut point
    # A functional activation: the feed-forward units are linear1's outputs.
    functional = fu_fast.analyze(transformer("relu"), TOKENS, repeats=1, levels=3)
    assert "encoder.layers.1.linear1" in functional.layers


@pytest.mark.parametrize("unit", ["auto", "position"])
def test_token_layers_equal_the_naive_path(unit):
    model = transformer()
    names = ["encoder.layers.0.activation", "encoder.layers.1", "embed"]
    result = check_equals_naive(model, TOKENS, names, unit, features_last=True)
    assert result.layers["embed"].ablation_units == (16 if unit == "auto" else 7 * 16)


def test_token_redundancy_treats_tokens_as_samples_with_the_cap():
    model = transformer()
    capped = fu_fast.analyze(model, TOKENS, layers=["embed"], repeats=1, levels=3, sample_cap=50).layers["embed"]
    assert capped.samples == 50
    full = fu_fast.analyze(model, TOKENS, layers=["embed"], repeats=1, levels=3).layers["embed"]
    with torch.inference_mode():
        features = model.embed(TOKENS).reshape(-1, 16).double().numpy()
    eigenvalues = np.linalg.eigvalsh(np.cov(features, rowvar=False))[::-1]
    assert full.samples == 24 * 7
    assert np.allclose(full.explained_variance_ratio, eigenvalues / eigenvalues.sum(), atol=1e-6)


def test_the_fused_transformer_fast_path_is_off_during_an_analysis_and_restored():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(torch.backends.mha.get_fastpath_enabled())
            return x

    model = transformer()
    model.embed = nn.Sequential(model.embed, Probe())
    assert torch.backends.mha.get_fastpath_enabled()
    fu_fast.analyze(model, TOKENS, layers=["encoder.layers.0.linear1"], repeats=1, levels=3)
    assert seen and not any(seen)
    assert torch.backends.mha.get_fastpath_enabled()


def test_token_logits_count_every_token_and_a_token_mask_leaves_padding_out():
    model = transformer(per_token=True)
    padding = torch.zeros(24, 7, dtype=torch.bool)
    padding[::3, 5:] = True                      # the last two tokens of every third example
    inputs = TOKENS.clone()
    inputs[padding] = 0.0

    def token_mask(x):
        return x.abs().sum(dim=-1) != 0

    result = check_equals_naive(model, inputs, ["encoder.layers.0.activation", "encoder.layers.1"], "auto",
                                features_last=True, predictions=int((~padding).sum()), token_mask=token_mask)
    assert result.data["predictions"] == 24 * 7 - 16 and result.data["examples"] == 24
    labels = torch.randint(0, 4, (24, 7), generator=torch.Generator().manual_seed(8))
    with_labels = fu_fast.analyze(model, (inputs, labels), layers=["encoder.layers.1"], repeats=1, levels=3,
                                  token_mask=token_mask)
    with torch.inference_mode():
        predicted = model(inputs).argmax(dim=-1)
    expected = ((predicted == labels) & ~padding).sum().item() / (~padding).sum().item()
    assert with_labels.model["accuracy"] == pytest.approx(expected)


def test_token_mask_of_the_wrong_shape_is_one_clear_error():
    with pytest.raises(fu_fast.FuFastError, match=r"token_mask must return a \(batch, tokens\)"):
        fu_fast.analyze(transformer(per_token=True), TOKENS, layers=["embed"], repeats=1, levels=3,
                        token_mask=lambda x: torch.ones(x.shape[0], dtype=torch.bool))
