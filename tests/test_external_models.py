"""Models outside the zoo (fu_fast.models.external): torchvision:NAME, timm:NAME and
package.module:factory, their state dict files, and `fu-fast analyze --model` with them."""

import json
import pickle
import sys

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from fu_fast import FuFastError
from fu_fast.cli.app import app
from fu_fast.models.external import build_external, is_external

from conftest import one_error_line

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


class NotAStateDict:
    """Pickled into a file: a weights-only load must refuse it."""


def one_line_error(call, *fragments) -> str:
    with pytest.raises(FuFastError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture(scope="module")
def seeded_resnet18(tmp_path_factory):
    """A seeded torchvision ResNet18 with 10 classes and its state dict file."""
    torch.manual_seed(1234)
    model = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(model.state_dict(), path)
    return model, path


FACTORIES = '''
import torch
from torch import nn


def small_cnn(num_classes=5):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


def vector_mlp():
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))


def broken():
    raise RuntimeError("the factory broke")


def not_a_module():
    return 42


NOT_CALLABLE = 3
'''


@pytest.fixture
def factories(tmp_path, monkeypatch, request):
    """A module of factories in a temporary directory on sys.path; returns its (unique) name."""
    name = "fu_ext_factories_" + "".join(c if c.isalnum() else "_" for c in request.node.name)
    (tmp_path / f"{name}.py").write_text(FACTORIES)
    (tmp_path / f"{name}_bad.py").write_text("import no_such_dependency_of_fu_fast\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for module in (name, f"{name}_bad"):
        sys.modules.pop(module, None)


# --- torchvision ---------------------------------------------------------------------------------

def test_names_outside_the_zoo_hold_a_colon():
    assert is_external("torchvision:resnet18") and is_external("timm:resnet50") and is_external("pkg.mod:make")
    assert not is_external("resnet18") and not is_external(None)


def test_a_torchvision_model_by_name_loads_a_state_dict_and_gives_identical_outputs(seeded_resnet18, tmp_path):
    reference, path = seeded_resnet18
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(x)
    torch.manual_seed(99)   # other fresh weights: the file must replace all of them
    net = build_external("torchvision:resnet18", num_classes=10, weights=path).eval()
    with torch.no_grad():
        assert torch.equal(net(x), expected)
    assert net.fu_fast_config == {"name": "torchvision:resnet18", "width": None,
                                  "options": {"input_size": 224, "num_classes": 10, "weights": str(path)}}
    # A checkpoint dict holding it, and the keys of a DDP model, load the same weights.
    for i, saved in enumerate(({"state_dict": reference.state_dict(), "epoch": 3},
                               {"model": {"module." + k: v for k, v in reference.state_dict().items()}})):
        torch.save(saved, tmp_path / f"{i}.pt")
        other = build_external("torchvision:resnet18", num_classes=10, weights=tmp_path / f"{i}.pt").eval()
        with torch.no_grad():
            assert torch.equal(other(x), expected)


def test_fresh_torchvision_weights_follow_the_seed_and_the_input_size_its_weights():
    torch.manual_seed(5)
    a = build_external("torchvision:resnet18", num_classes=10)
    torch.manual_seed(5)
    b = build_external("torchvision:resnet18", num_classes=10, image_size=64)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert b.fu_fast_config["options"] == {"input_size": 64, "num_classes": 10}
    assert build_external("torchvision:squeezenet1_1").fu_fast_config["options"] == {"input_size": 224,
                                                                                      "num_classes": 1000}


def test_torchvision_inception_v3_without_and_with_weights(tmp_path):
    with torch.no_grad():
        fresh = build_external("torchvision:inception_v3", num_classes=10)
        assert fresh.AuxLogits is None and fresh.fu_fast_config["options"]["input_size"] == 299
        # The official state dict holds the auxiliary head: it loads strictly, then the head goes
        # and the evaluation output is the logits tensor.
        official = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False, num_classes=10)
        torch.save(official.state_dict(), tmp_path / "inception.pt")
        net = build_external("torchvision:inception_v3", num_classes=10, weights=tmp_path / "inception.pt").eval()
        assert net.AuxLogits is None and net.transform_input
        output = net(torch.randn(1, 3, 80, 80))
    assert isinstance(output, torch.Tensor) and output.shape == (1, 10)


def test_vision_transformers_are_built_for_the_image_size():
    net = build_external("torchvision:vit_b_32", num_classes=10, image_size=64).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def save_custom_object_zip(path):
    torch.save(NotAStateDict(), path)


def save_custom_object_pickle(path):
    with open(path, "wb") as f:
        pickle.dump(NotAStateDict(), f, protocol=2)


def save_without(key):
    def save(path, reference):
        state = reference.state_dict()
        del state[key]
        torch.save(state, path)
    return save


def save_wrong_shape(path, reference):
    state = reference.state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, path)


@pytest.mark.parametrize("write, fragments", [
    (save_without("fc.bias"), ["missing keys fc.bias"]),
    (save_wrong_shape, ["shapes differ", "layer1.0.conv1.weight (3, 3, 3, 3) vs (64, 64, 3, 3)"]),
    (lambda path, _: save_custom_object_zip(path), ["refuses", "NotAStateDict", "save a state_dict"]),
    (lambda path, _: save_custom_object_pickle(path), ["refuses", "NotAStateDict"]),
    (lambda path, _: torch.save([torch.zeros(1)], path), ["holds a list, not a state dict"]),
    (lambda path, _: torch.save({"epoch": 3, "lr": 0.1}, path), ["keys epoch, lr, not a state dict"]),
    (lambda path, _: path.write_bytes(b""), ["empty"]),
    (lambda path, _: None, ["does not exist"]),
])
def test_a_bad_weights_file_is_one_line_naming_it(write, fragments, seeded_resnet18, tmp_path):
    path = tmp_path / "weights.pt"
    write(path, seeded_resnet18[0])
    one_line_error(lambda: build_external("torchvision:resnet18", num_classes=10, weights=path), str(path),
                   *fragments)


def test_many_offending_keys_are_counted_and_a_classifier_size_is_advised(seeded_resnet18):
    _, path = seeded_resnet18
    one_line_error(lambda: build_external("torchvision:resnet18", weights=path),
                   "fc.weight (10, 512) vs (1000, 512)", "--num-classes 10")
    message = one_line_error(lambda: build_external("torchvision:resnet34", num_classes=10, weights=path),
                             "missing keys layer1.2.conv1.weight", "more)")
    assert message.count(",") < 12   # the first few keys, not all of them


@pytest.mark.parametrize("spec, fragments", [
    ("torchvision:resnet19", ["unknown torchvision classification model 'resnet19'", "list_models"]),
    ("torchvision:fasterrcnn_resnet50_fpn", ["detection model", "classification models only", "list_models"]),
    ("torchvision:deeplabv3_resnet50", ["segmentation model"]),
    ("torchvision:r3d_18", ["video model"]),
    ("torchvision:raft_small", ["optical flow model"]),
    ("torchvision:", ["say the model after the colon"]),
    ("not a name:x", ["is not a model name"]),
])
def test_names_that_are_not_classification_models_are_refused(spec, fragments):
    one_line_error(lambda: build_external(spec), *fragments)


def test_bad_build_settings_are_one_line():
    one_line_error(lambda: build_external("torchvision:resnet18", num_classes=1), "num_classes")
    one_line_error(lambda: build_external("torchvision:resnet18", image_size=0), "image_size")
    one_line_error(lambda: build_external("torchvision:resnet18", input_dim=5), "input_dim applies to vector models")
    one_line_error(lambda: build_external("torchvision:maxvit_t", image_size=64), "cannot build torchvision:maxvit_t")


# --- timm ----------------------------------------------------------------------------------------

def test_without_timm_a_timm_model_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)   # import timm raises ImportError, installed or not
    one_line_error(lambda: build_external("timm:resnet18"), "timm:resnet18 needs timm", "pip install timm")


def test_a_timm_model_by_name():
    pytest.importorskip("timm", reason="timm is not installed (pip install 'fu-fast[timm]')")
    net = build_external("timm:resnet18", num_classes=10)
    assert net.fu_fast_config["options"] == {"input_size": 224, "num_classes": 10}
    one_line_error(lambda: build_external("timm:no_such_model_here"), "unknown timm model")


# --- package.module:factory ----------------------------------------------------------------------

def test_a_factory_builds_the_model(factories):
    net = build_external(f"{factories}:small_cnn")
    assert net[-1].out_features == 5
    assert net.fu_fast_config == {"name": f"{factories}:small_cnn", "width": None, "options": {}}
    net = build_external(f"{factories}:small_cnn", num_classes=7, image_size=16)
    assert net[-1].out_features == 7
    assert net.fu_fast_config["options"] == {"input_size": 16, "num_classes": 7}


@pytest.mark.parametrize("target, fragments", [
    ("{m}:broken", ["broken() raised RuntimeError: the factory broke"]),
    ("{m}:not_a_module", ["not_a_module() returned a int, not a torch.nn.Module"]),
    ("{m}:NOT_CALLABLE", ["NOT_CALLABLE is a int, not a function"]),
    ("{m}:missing", ["module {m} has no attribute 'missing'"]),
    ("{m}_absent:make", ["no module named '{m}_absent'"]),
    ("{m}_bad:make", ["importing {m}_bad failed", "ModuleNotFoundError", "no_such_dependency_of_fu_fast"]),
    ("{m}:vector_mlp", ["vector_mlp(num_classes=3) raised TypeError"]),
])
def test_a_factory_that_fails_is_one_line(target, fragments, factories):
    spec = target.format(m=factories)
    num_classes = 3 if "vector_mlp" in spec else None
    one_line_error(lambda: build_external(spec, num_classes=num_classes),
                   spec, *[f.format(m=factories) for f in fragments])


# --- synthetic images ----------------------------------------------------------------------------

def test_synthetic_data_for_an_image_model_is_gaussian_images_of_its_side():
    from fu_fast import data

    config = {"name": "torchvision:resnet18", "width": None, "options": {"input_size": 224, "num_classes": 10}}
    images = data.for_analysis(config, name="synthetic", image_size=20, limit=5)
    x, label = images[3]
    assert x.shape == (3, 20, 20) and 0 <= label < 10 and images.num_classes == 10
    assert torch.equal(images[3][0], x) and not torch.equal(images[2][0], x)   # drawn per example, repeatably
    assert images.info == {"name": "synthetic", "examples": 5, "split": "test",
                           "options": {"images": True, "image_size": 20, "num_classes": 10, "random_labels": False,
                                       "augment": False, "seed": 0}}
    assert not torch.equal(data.for_analysis(config, name="synthetic", split="train", image_size=20)[3][0], x)
    one_line_error(lambda: data.for_analysis(config, name="synthetic", split="val"), "train and test splits")
    # A vector model keeps the teacher data.
    vectors = data.for_analysis({"name": "mlp", "options": {"input_dim": 7}}, name="synthetic", limit=2)
    assert vectors[0][0].shape == (7,)


# --- the command line ----------------------------------------------------------------------------

def test_analyze_a_torchvision_model_with_weights_on_synthetic_images(seeded_resnet18, tmp_path):
    _, weights = seeded_resnet18
    out = tmp_path / "r.json"
    result = invoke("analyze", "--model", "torchvision:resnet18", "--num-classes", "10", "--weights", weights,
                    "--data", "synthetic", "--image-size", "32", "--limit", "8", "--levels", "3", "--repeats", "1",
                    "--unit", "position", "--layers", "relu", "--out", out)
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["model"]["name"] == "torchvision:resnet18" and document["model"]["width"] is None
    assert document["model"]["options"] == {"input_size": 32, "num_classes": 10, "weights": str(weights)}
    assert document["data"]["name"] == "synthetic" and document["data"]["examples"] == 8
    assert document["data"]["options"]["image_size"] == 32 and document["data"]["options"]["num_classes"] == 10
    assert [layer["name"] for layer in document["layers"]] == ["relu"]
    assert "torchvision:resnet18 (" in result.stdout   # the table's title, without a width


def test_analyze_a_factory_model_with_its_default_layers(factories, tmp_path):
    out = tmp_path / "r.json"
    result = invoke("analyze", "--model", f"{factories}:small_cnn", "--image-size", "12", "--data", "synthetic",
                    "--limit", "8", "--levels", "3", "--repeats", "1", "--unit", "position", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["model"]["options"] == {"input_size": 12} and len(document["layers"]) >= 1
    # Without an image size a factory model gets the synthetic vectors (an MLP's data).
    result = invoke("analyze", "--model", f"{factories}:vector_mlp", "--data", "synthetic", "--limit", "8",
                    "--levels", "3", "--repeats", "1", "--unit", "position", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["data"]["options"]["input_dim"] == 10


@pytest.mark.parametrize("args, fragments", [
    (["--model", "torchvision:resnet19"], ["unknown torchvision classification model", "list_models"]),
    (["--model", "torchvision:fasterrcnn_resnet50_fpn"], ["detection model", "list_models"]),
    (["--model", "torchvision:resnet18", "--weights", "{tmp}/missing.pt"], ["{tmp}/missing.pt", "does not exist"]),
    (["--model", "torchvision:resnet18", "--weights", "{tmp}/object.pt"], ["{tmp}/object.pt", "refuses"]),
    (["--model", "torchvision:resnet18", "--weights", "{tmp}/resnet18.pt"], ["does not fit", "--num-classes 10"]),
    (["--model", "torchvision:resnet18", "--width", "2"], ["--width", "zoo models"]),
    (["--model", "torchvision:resnet18", "--checkpoint", "{tmp}/run"], ["--checkpoint", "--weights"]),
    (["--model", "mlp", "--weights", "{tmp}/resnet18.pt"], ["--weights", "--checkpoint"]),
    (["--model", "torchvision:resnet18", "--num-classes", "1"], ["num_classes"]),
    (["--model", "torchvision:resnet18", "--input-dim", "5"], ["input_dim applies to vector models"]),
    (["--model", "torchvision:resnet18", "--image-size", "0"], ["image_size"]),
    (["--model", "torchvision:resnet18"], ["say which data"]),
    (["--model", "torchvision:resnet18", "--data", "synthetic", "--split", "val"], ["train and test splits"]),
    (["--model", "timm:resnet18"], ["pip install timm"]),
    (["--model", "{factories}:broken"], ["broken() raised RuntimeError"]),
    (["--model", "{factories}:not_a_module"], ["not a torch.nn.Module"]),
    (["--model", "{factories}_absent:make"], ["no module named"]),
    (["--model", "{factories}:small_cnn", "--data", "cifar10", "--data-dir", "{tmp}"], ["--image-size"]),
])
def test_command_line_errors_are_one_line_and_write_nothing(args, fragments, seeded_resnet18, factories, tmp_path,
                                                            monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    torch.save(seeded_resnet18[0].state_dict(), tmp_path / "resnet18.pt")
    save_custom_object_zip(tmp_path / "object.pt")
    before = sorted(tmp_path.rglob("*"))
    places = {"{tmp}": str(tmp_path), "{factories}": factories}

    def fill(text):
        for key, value in places.items():
            text = text.replace(key, value)
        return text

    out = tmp_path / "out.json"
    one_error_line(invoke("analyze", *[fill(a) for a in args], "--limit", "2", "--unit", "position", "--out", out,
                          "-q"),
                   *[fill(f) for f in fragments])
    assert sorted(tmp_path.rglob("*")) == before
