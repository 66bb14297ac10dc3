"""Models that return their logits in another form than a tensor: a tuple or list, a dict, an
output object with .logits (HuggingFace's), or anything a logits= function can read."""

import types

import pytest
import torch
from torch import nn

import fu_fast
from fu_fast import FuFastError

from conftest import mlp


class Wrapped(nn.Module):
    """The same network as conftest.mlp, returning its logits packed by ``pack``."""

    def __init__(self, pack):
        super().__init__()
        self.net, self.pack = mlp(8, 12, 3), pack

    def forward(self, x):
        return self.pack(self.net(x))


PACKINGS = {
    "tuple": lambda z: (z, z.sum()),
    "list": lambda z: [z],
    "dict": lambda z: {"logits": z, "hidden": z * 2},
    "output object": lambda z: types.SimpleNamespace(logits=z, loss=None),
}
INPUTS = torch.randn(40, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


@pytest.mark.parametrize("packing", list(PACKINGS))
def test_logits_are_found_and_give_the_tensor_models_result(packing):
    # Masks are keyed by the layer's name: the plain model has the same names, returning a tensor.
    plain = fu_fast.analyze(Wrapped(lambda z: z), INPUTS, layers=["net.1"], batch_size=16)
    packed = fu_fast.analyze(Wrapped(PACKINGS[packing]), INPUTS, layers=["net.1"], batch_size=16)
    assert packed.layers["net.1"].curves == plain.layers["net.1"].curves
    assert packed.layers["net.1"].components == plain.layers["net.1"].components


def test_a_logits_function_reads_any_output_and_default_layers_skip_the_output_module():
    model = Wrapped(lambda z: {"scores": {"class": z}})
    with pytest.raises(FuFastError, match="returned a dict without logits.*pass logits="):
        fu_fast.analyze(model, INPUTS)
    result = fu_fast.analyze(model, INPUTS, logits=lambda out: out["scores"]["class"])
    assert list(result.layers) == ["net.1"]
    assert result.layers["net.1"].curves == fu_fast.analyze(Wrapped(lambda z: z), INPUTS).layers["net.1"].curves


def test_logits_that_are_not_batch_by_classes_are_refused():
    with pytest.raises(FuFastError, match=r"logits must be \(batch, classes\) or \(batch, tokens, classes\), "
                                          r"got \(\d+, 3, 1, 1\)"):
        fu_fast.analyze(Wrapped(lambda z: z[:, :, None, None]), INPUTS, layers=["net.1"])
