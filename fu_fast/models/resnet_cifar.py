"""ResNet56 for CIFAR-10 (He et al. 2016, section 4.2): a 3x3 stem conv of 16 filters + BN +
ReLU, three stages of 9 basic blocks with 16, 32, 64 filters (stride 2 at the first block of
stages 2 and 3), global average pool, fc. Shortcuts that change shape are 1x1 conv + BN
(option B) rather than the paper's zero-padding identity (option A): a learned projection is
what torchvision-style blocks use and it scales with width like every other conv."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import CIFAR_OPTIONS, RESIDUAL, register_model

if TYPE_CHECKING:
    from .resnet import ResNet


@register_model("resnet56", options={"init": "torchvision", **CIFAR_OPTIONS},
                training=dict(data="cifar10", optimizer="sgd_momentum", lr=0.1, schedule="step:91,136",
                              batch_size=128, epochs=182, weight_decay=2e-4, augment=True, patience=None),
                compress_refusal=RESIDUAL)
def resnet56(width: float, *, num_classes: int, dropout: float, input_size: int) -> ResNet:
    """Block outputs ``layer1.0`` ... ``layer3.8`` are the 27 analysis layers. ``input_size``
    changes no shape: global average pooling takes any image side."""
    from .resnet import ResNet   # imported here, so that resnet18 registers after resnet56

    del input_size
    return ResNet(width, (16, 32, 64), (9, 9, 9), imagenet_stem=False,
                  num_classes=num_classes, dropout=dropout)
