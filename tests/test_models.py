"""The model zoo: shapes against torchvision, width scaling, initialisations, analysis layers
(cut points, through the engine), rebuilding from fu_fast_config, TF-equal LRN and pooling, and
the errors a user can cause."""

import json
import math

import pytest
import torch
import torchvision
from torch import nn

import fu_fast
from fu_fast import FuFastError, models
from fu_fast.models import alexnet
from fu_fast.models.init import initialize, truncated_std

WIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)
CONV_NETS = ("alexnet", "resnet56", "resnet18", "inception_v3")
# Small inputs the architectures allow: (shape of one example, build options).
SMALL = {
    "mlp": ((10,), {}),
    "alexnet": ((3, 32, 32), {}),
    "resnet56": ((3, 32, 32), {}),
    "resnet18": ((3, 32, 32), {"input_size": 32}),
    "inception_v3": ((3, 75, 75), {"input_size": 75}),
    "inception_v3_layer": ((3, 75, 75), {"input_size": 75}),
}


def meta_build(name, width=1.0, **options):
    """Shapes only: no memory and no initialisation work, even for 4x Inception."""
    with torch.device("meta"):
        return models.build(name, width, **options)


def _std(tensor):
    return float(tensor.detach().std())


def _max_abs(tensor):
    return float(tensor.detach().abs().max())


def shapes(model):
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def test_names_and_default_options():
    assert models.names() == ["mlp", "alexnet", "resnet56", "resnet18", "inception_v3", "inception_v3_layer"]
    assert models.default_options("mlp") == {"init": "gaussian:0.01", "dropout": 0.0, "num_classes": 2,
                                             "input_dim": 10}
    assert models.default_options("inception_v3") == {"init": "truncated_normal:0.1", "dropout": 0.0,
                                                      "num_classes": 1000, "input_size": 299}
    assert models.default_options("alexnet")["input_size"] == 32
    assert models.default_options("resnet18")["input_size"] == 224
    for name in models.names():
        model = meta_build(name)
        assert model.fu_fast_config == {"name": name, "width": 1.0, "options": models.default_options(name)}


def test_imagenet_models_equal_torchvision_in_shape():
    """At width 1, every parameter and buffer shape equals torchvision's (Inception without its
    auxiliary head), so the parameter counts are the paper's and torchvision weights load."""
    with torch.device("meta"):
        tv_resnet = torchvision.models.resnet18(weights=None)
        tv_inception = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    resnet, inception = meta_build("resnet18"), meta_build("inception_v3")
    assert models.parameter_count(resnet) == models.parameter_count(tv_resnet) == 11_689_512
    assert models.parameter_count(inception) == models.parameter_count(tv_inception) == 23_834_568
    assert shapes(resnet) == shapes(tv_resnet)
    assert shapes(inception) == shapes(tv_inception)
    bn = inception.Mixed_5b.branch1x1.bn
    assert bn.eps == 0.001 and bn.momentum == pytest.approx(1 - 0.9997)


@pytest.mark.parametrize("name, make", [
    ("resnet18", lambda: torchvision.models.resnet18(weights=None)),
    ("inception_v3", lambda: torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)),
])
def test_imagenet_models_compute_what_torchvision_computes(name, make, generator):
    """With torchvision's weights loaded, the outputs are torchvision's: same layout, branch
    order and concatenation order, not only the same shapes. The batch norm statistics are
    first set from a batch, so that activations keep their scale through the depth and the
    logits depend on every layer (with fresh statistics they are little more than the fc bias)."""
    torch.manual_seed(0)
    reference = make()
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None   # running statistics = the calibration batch's
    with torch.no_grad():
        reference.train()(torch.randn(8, 3, 75, 75, generator=generator))
    reference.eval()
    model = meta_build(name, input_size=75).to_empty(device="cpu").eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 75, 75, generator=generator)
    with torch.no_grad():
        expected = reference(x)
        assert float((expected - reference.fc.bias).std()) > 0.1   # informative logits
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", models.names())
def test_forward_at_every_width(name):
    """Batch size 1 in eval mode at widths 1/4 to 4, logits of the right shape.

    Inception (both variants) runs for real at widths 0.25, 0.5 and 1 only: at 4x its 356M
    parameters take about 20 s to initialise on two CPU cores. At 2x and 4x it is built and run
    on the meta device, which checks that every layer's shapes compose, without computing."""
    shape, options = SMALL[name]
    for width in WIDTHS:
        torch.manual_seed(0)
        on_meta = name.startswith("inception") and width > 1
        device = "meta" if on_meta else "cpu"
        with torch.device(device):
            model = models.build(name, width, **options).eval()
            x = torch.randn(1, *shape)
        with torch.no_grad():
            logits = model(x)
        assert logits.shape == (1, model.fu_fast_config["options"]["num_classes"])
        if not on_meta:
            assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", models.names())
def test_trains_at_small_width(name):
    """Train mode (batch statistics, dropout) forward and backward reach every parameter."""
    shape, options = SMALL[name]
    torch.manual_seed(0)
    model = models.build(name, 0.25, dropout=0.5, **options).train()
    model(torch.randn(2, *shape)).logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", CONV_NETS)
def test_parameters_grow_about_4x_per_doubling(name):
    """Paper Fig. E1: doubling every conv's filters and every fc's units multiplies most
    parameters by 4; only the first conv, the last fc and batch norm scale linearly (measured at
    widths 1 -> 2 -> 4: 3.82 and 3.91 for Inception's 1000-way fc, 3.97-4.00 for the others). A
    width that left some layers alone would give ratios well below 3.8."""
    counts = [models.parameter_count(meta_build(name, w)) for w in WIDTHS]
    ratios = [b / a for a, b in zip(counts, counts[1:])]
    assert all(3.8 <= r <= 4.0 for r in ratios[2:]), ratios   # widths 1 -> 2 -> 4
    assert all(3.0 <= r <= 4.0 for r in ratios), ratios       # narrower: linear layers weigh more


def test_mlp_hidden_layer_scales_and_parameters_double():
    """With 10 inputs and 2 outputs the MLP's parameters are linear in the hidden width:
    (10 + 1 + 2) * 128 w + 2, so they double (not quadruple) per doubling."""
    built = [models.build("mlp", w) for w in WIDTHS]
    assert [m.fc1.out_features for m in built] == [32, 64, 128, 256, 512]
    counts = [models.parameter_count(m) for m in built]
    assert counts[2] == 13 * 128 + 2
    assert all(1.99 <= b / a <= 2.0 for a, b in zip(counts, counts[1:]))
    assert models.build("mlp", input_dim=10_000, num_classes=3).fc1.in_features == 10_000


def test_inception_v3_layer_varies_only_mixed_5d():
    """Mixed_5d has 288 w channels; the layers reading its output (Mixed_6a's convs, and, through
    Mixed_6a's max-pool branch that passes those channels on, Mixed_6b's input convs) adapt;
    every other shape is width 1's."""
    full = shapes(meta_build("inception_v3"))
    readers = ("Mixed_6a.branch3x3.", "Mixed_6a.branch3x3dbl_1.", "Mixed_6b.branch1x1.",
               "Mixed_6b.branch7x7_1.", "Mixed_6b.branch7x7dbl_1.", "Mixed_6b.branch_pool.")
    for width in WIDTHS:
        model = meta_build("inception_v3_layer", width, input_size=75).eval()
        assert model.analysis_layers == ["Mixed_5d"]
        assert model(torch.empty(1, 3, 75, 75, device="meta")).shape == (1, 1000)
        assert model.Mixed_5d.out_channels == round(288 * width)
        changed = {k for k, s in shapes(model).items() if full[k] != s}
        assert all(k.startswith(("Mixed_5d.", *readers)) for k in changed)
        assert model.Mixed_5c.out_channels == 288 and model.Mixed_6b.out_channels == 768
        assert bool(changed) == (width != 1)


def _scheme_std(scheme, fan_in, fan_out):
    """The formula of each scheme: (std, uniform bound or None)."""
    uniform = {"glorot_uniform": math.sqrt(6 / (fan_in + fan_out)), "he_uniform": math.sqrt(6 / fan_in),
               "lecun_uniform": math.sqrt(3 / fan_in)}
    if scheme in uniform:
        return uniform[scheme] / math.sqrt(3), uniform[scheme]
    normal = {"glorot_normal": math.sqrt(2 / (fan_in + fan_out)), "he_normal": math.sqrt(2 / fan_in),
              "lecun_normal": math.sqrt(1 / fan_in), "gaussian:0.03": 0.03}
    return normal[scheme], None


@pytest.mark.parametrize("scheme", ["glorot_normal", "glorot_uniform", "he_normal", "he_uniform",
                                    "lecun_normal", "lecun_uniform", "gaussian:0.03"])
def test_initialisation_std_matches_formula(scheme):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2000, 500), nn.Conv2d(64, 128, 3), nn.BatchNorm2d(128))
    net[2].weight.data.fill_(3.0)
    initialize(net, scheme)
    for layer, fan_in, fan_out in ((net[0], 2000, 500), (net[1], 64 * 9, 128 * 9)):
        std, bound = _scheme_std(scheme, fan_in, fan_out)
        assert _std(layer.weight) == pytest.approx(std, rel=0.02)
        assert float(layer.weight.detach().mean()) == pytest.approx(0.0, abs=0.02 * std)
        if bound is not None:
            assert _max_abs(layer.weight) == pytest.approx(bound, rel=0.01)
            assert _max_abs(layer.weight) <= bound
        assert not layer.bias.any()   # an explicit scheme zeroes the biases
    assert (net[2].weight == 1).all() and not net[2].bias.any()


def test_truncated_normal_std_is_the_truncated_distributions():
    """TF's truncated_normal(std) cuts at +-2 std; its std is then about 0.88 std. Checked against
    the truncated-normal variance integrated numerically, and empirically."""
    x = torch.linspace(-2, 2, 400_001, dtype=torch.float64)
    density = torch.exp(-x * x / 2)
    variance = float(torch.trapezoid(x * x * density, x) / torch.trapezoid(density, x))
    assert truncated_std(1.0) == pytest.approx(math.sqrt(variance), rel=1e-9)
    assert truncated_std(1.0) == pytest.approx(0.8796, abs=1e-4)

    torch.manual_seed(0)
    layer = nn.Linear(2000, 500)
    initialize(layer, "truncated_normal:0.1")
    assert _std(layer.weight) == pytest.approx(truncated_std(0.1), rel=0.01)
    assert _max_abs(layer.weight) <= 0.2 and not layer.bias.any()


def test_torchvision_initialisation_and_model_defaults():
    """torchvision (AlexNet and ResNet default): conv weights He normal over fan_out, conv biases
    0, linear layers PyTorch's default U(+-1/sqrt(fan_in)) with biases. The MLP's default is the
    paper's gaussian 0.01, Inception's truncated normal 0.1."""
    torch.manual_seed(0)
    net = models.build("alexnet", 2.0)
    assert _std(net.conv2.weight) == pytest.approx(math.sqrt(2 / (512 * 25)), rel=0.02)
    assert not net.conv2.bias.any()
    fan_in = net.fc3.in_features
    assert _std(net.fc3.weight) == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.02)
    assert net.fc3.bias.abs().max() <= 1 / math.sqrt(fan_in) and net.fc3.bias.any()

    mlp = models.build("mlp", input_dim=10_000)
    assert _std(mlp.fc1.weight) == pytest.approx(0.01, rel=0.02) and not mlp.fc1.bias.any()
    conv = models.build("inception_v3", 0.25, input_size=75).Mixed_7c.branch3x3dbl_2.conv
    assert _std(conv.weight) == pytest.approx(truncated_std(0.1), rel=0.02)
    assert _max_abs(conv.weight) <= 0.2


@pytest.mark.parametrize("name", models.names())
def test_analysis_layers_are_cut_points(name):
    """The declared layers exist, and the engine accepts each one: it checks behaviourally that
    the model's output depends on the input only through the layer's output (substituting the
    output for another input's), and refuses a layer that is not a cut point."""
    shape, options = SMALL[name]
    torch.manual_seed(0)
    model = models.build(name, 0.25, **options)
    layers = models.analysis_layers(model)
    assert layers == models.analysis_layers(name)
    assert set(layers) <= set(dict(model.named_modules()))
    expected = {"mlp": 1, "alexnet": 4, "resnet56": 27, "resnet18": 8, "inception_v3": 11, "inception_v3_layer": 1}
    assert len(layers) == expected[name]
    inputs = torch.randn(3 if name.startswith("inception") else 4, *shape)
    result = fu_fast.analyze(model, inputs, repeats=1, levels=3, unit="channel")
    assert list(result.layers) == layers


def test_a_layer_inside_a_residual_block_gets_its_copies_at_the_block_input():
    model = models.build("resnet56", 0.25)
    result = fu_fast.analyze(model, torch.randn(4, 3, 8, 8), layers=["layer2.0.bn2", "layer2.0"], repeats=1,
                             levels=3)
    assert result.layers["layer2.0.bn2"].expanded_at == "layer1"
    assert result.layers["layer2.0"].expanded_at == "layer2.0"      # a block output: a cut point
    assert models.analysis_layers("resnet56")[::9] == ["layer1.0", "layer2.0", "layer3.0"]
    with pytest.raises(FuFastError, match="analysis_layers"):
        models.analysis_layers(nn.Linear(2, 2))


@pytest.mark.parametrize("name", models.names())
def test_rebuild_from_fu_fast_config(name):
    """The config, through JSON as checkpoints store it, rebuilds the same shapes and config."""
    options = {"init": "he_uniform", "dropout": 0.25, "num_classes": 7}
    options.update({"input_dim": 12} if name == "mlp" else {"input_size": 80})
    model = meta_build(name, 0.5, **options)
    config = json.loads(json.dumps(model.fu_fast_config))
    recorded = {**options, "in_channels": 3, "units": None} if name == "alexnet" else options   # every option
    assert config == {"name": name, "width": 0.5, "options": recorded}
    rebuilt = meta_build(config["name"], config["width"], **config["options"])
    assert shapes(rebuilt) == shapes(model) and rebuilt.fu_fast_config == model.fu_fast_config


def test_alexnet_takes_explicit_layer_sizes():
    """Thinned AlexNets (fu_fast.compress) have per-layer sizes no width gives."""
    model = meta_build("alexnet", 2.0, units=(5, 7, 11, 3))
    assert model.layer_units() == (5, 7, 11, 3) and model.fc3.in_features == 7 * 8 * 8
    config = json.loads(json.dumps(model.fu_fast_config))
    assert config["options"]["units"] == [5, 7, 11, 3]
    assert shapes(meta_build("alexnet", config["width"], **config["options"])) == shapes(model)
    for bad in ([1, 2, 3], [1, 2, 3, 0], "wide"):
        with pytest.raises(FuFastError, match="units must be 4 positive integers"):
            models.build("alexnet", units=bad)


def test_init_is_recorded_resolved():
    assert models.build("mlp", init="default").fu_fast_config["options"]["init"] == "gaussian:0.01"
    assert models.build("mlp", init="gaussian:1e-2").fu_fast_config["options"]["init"] == "gaussian:0.01"
    assert meta_build("resnet56").fu_fast_config["options"]["init"] == "torchvision"
    assert models.build("mlp", 2, dropout=0).fu_fast_config == models.build("mlp", 2.0, dropout=0.0).fu_fast_config


@pytest.mark.parametrize("call, words", [
    (lambda: models.build("vgg16"), ["unknown model 'vgg16'", "resnet18"]),
    (lambda: models.build("mlp", input_size=32), ["unknown option input_size", "input_dim"]),
    (lambda: models.build("alexnet", depth=3, colour=1), ["unknown options colour, depth", "dropout"]),
    (lambda: models.default_options("resnet50"), ["unknown model"]),
    (lambda: models.analysis_layers("lenet"), ["unknown model"]),
    (lambda: models.build("mlp", init="he"), ["unknown init 'he'", "he_normal", "gaussian:STD"]),
    (lambda: models.build("mlp", init="gaussian"), ["unknown init"]),
    (lambda: models.build("mlp", init="gaussian:-1"), ["unknown init", "STD > 0"]),
    (lambda: models.build("mlp", init="gaussian:nan"), ["unknown init"]),
    (lambda: models.build("mlp", init="truncated_normal:x"), ["unknown init"]),
    (lambda: models.build("mlp", init="he_normal:0.1"), ["unknown init"]),
    (lambda: models.build("mlp", init=0.01), ["unknown init 0.01"]),
    (lambda: models.build("mlp", 0), ["width", "positive"]),
    (lambda: models.build("mlp", -1.0), ["width", "positive"]),
    (lambda: models.build("mlp", float("inf")), ["width", "finite"]),
    (lambda: models.build("mlp", float("nan")), ["width"]),
    (lambda: models.build("mlp", "1"), ["width"]),
    (lambda: models.build("resnet56", 0.02), ["resnet56", "width 0.02", "16 units", "at least 0.0625"]),
    (lambda: models.build("mlp", 0.001), ["width 0.001", "128 units"]),
    (lambda: models.build("inception_v3", input_size=74), ["input_size 74", "at least 75"]),
    (lambda: models.build("alexnet", input_size=0), ["input_size", "positive integer"]),
    (lambda: models.build("resnet18", input_size="224"), ["input_size"]),
    (lambda: models.build("mlp", num_classes=1), ["num_classes", "integer of at least 2"]),
    (lambda: models.build("mlp", input_dim=2.5), ["input_dim"]),
    (lambda: models.build("mlp", dropout=1.0), ["dropout", "[0, 1)"]),
    (lambda: models.build("mlp", dropout=True), ["dropout"]),
])
def test_user_errors_are_one_clear_line(call, words):
    with pytest.raises(FuFastError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_smallest_widths_still_build():
    """A width just large enough to give the smallest layer one unit builds; the limit is
    per model (resnet56's stem has 16 filters at width 1)."""
    assert models.build("resnet56", 1 / 16).conv1.out_channels == 1
    assert models.build("mlp", 1 / 128).fc1.out_features == 1


def test_lrn_equals_tensorflow_formula(generator):
    """TF: b_c = a_c / (1 + 2e-5 * sum_{|c'-c|<=2} a_c'^2) ** 0.75, at float64, on an odd channel
    count (edges of the window included). Inputs are large enough for alpha to matter: torch's
    LocalResponseNorm with TF's alpha (divided by the size inside) would differ."""
    x = 100 * torch.randn(2, 7, 4, 5, generator=generator, dtype=torch.float64)
    squares = x * x
    window = torch.stack([squares[:, max(0, c - 2):c + 3].sum(1) for c in range(7)], 1)
    expected = x / (1.0 + 2e-5 * window) ** 0.75
    lrn = models.build("alexnet", 0.25).norm1
    assert torch.allclose(lrn(x), expected, rtol=1e-12, atol=0)
    naive = nn.LocalResponseNorm(5, alpha=2e-5, beta=0.75, k=1.0)(x)
    assert not torch.allclose(naive, expected, rtol=1e-3)


def test_alexnet_same_padding(generator):
    """TF 'SAME' pooling: output side ceil(n / 2); for an even side the windows start at 0 (the
    extra padding goes after: torch's ceil_mode), for an odd side one row pads each end."""
    pool = alexnet.MaxPool2dSame(3, 2)
    even = torch.randn(2, 3, 32, 32, generator=generator)
    odd = torch.randn(2, 3, 15, 15, generator=generator)
    assert torch.equal(pool(even), nn.MaxPool2d(3, 2, ceil_mode=True)(even))
    assert torch.equal(pool(odd), nn.MaxPool2d(3, 2, padding=1)(odd))
    for side in range(1, 12):
        assert pool(torch.zeros(1, 1, side, side)).shape[-1] == math.ceil(side / 2)
    net = models.build("alexnet", 0.5, input_size=24)
    assert net.fc3.in_features == 128 * 6 * 6 and net.conv1.padding == (2, 2)
    assert net(torch.randn(1, 3, 24, 24)).shape == (1, 10)


def test_alexnet_reads_grey_8x8_images(generator):
    """in_channels 1 and input_size 8 (scikit-learn's digits): maps of 8, 4 and 2 pixels a side."""
    net = models.build("alexnet", 0.25, input_size=8, in_channels=1)
    assert net.conv1.in_channels == 1 and net.fc3.in_features == 64 * 2 * 2
    assert net.fu_fast_config["options"]["in_channels"] == 1
    assert net(torch.randn(5, 1, 8, 8, generator=generator)).shape == (5, 10)
    with pytest.raises(RuntimeError):   # three-channel images do not fit a one-channel conv1
        net(torch.randn(1, 3, 8, 8))
    with pytest.raises(FuFastError, match="in_channels must be a positive integer"):
        models.build("alexnet", in_channels=0)
