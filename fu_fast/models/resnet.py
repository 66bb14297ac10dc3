"""ResNets of basic blocks (He et al. 2016, v1) with a width factor: ResNet18 for ImageNet here,
ResNet56 for CIFAR in resnet_cifar.py.

Module names are torchvision's (conv1, bn1, relu, maxpool, layer1..layerN, avgpool, fc), and the
blocks are torchvision's BasicBlock, whose output is taken after the residual add and the ReLU:
a block's module output is the analysed layer, ``layer1.0`` ... At width 1 ResNet18 equals
torchvision's resnet18 in every parameter shape.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from ._common import scaled
from .registry import IMAGENET_OPTIONS, RESIDUAL, register_model


class ResNet(nn.Module):
    """Stem -> stages of BasicBlocks (the first stage at stride 1, the others at stride 2) ->
    global average pool -> dropout -> fc. A block whose input shape differs from its output
    gets a 1x1 conv + BN shortcut (option B of He et al.).

    Args:
        width: multiplies every conv's filters (stem and all stages).
        channels: filters of each stage at width 1; the stem has as many as the first stage.
        blocks: blocks per stage.
        imagenet_stem: 7x7/2 conv + 3x3/2 max pool (ImageNet) instead of a 3x3/1 conv (CIFAR).
    """

    def __init__(self, width: float, channels: tuple[int, ...], blocks: tuple[int, ...], *,
                 imagenet_stem: bool, num_classes: int, dropout: float):
        super().__init__()
        widths = [scaled(c, width) for c in channels]
        if imagenet_stem:
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if imagenet_stem else nn.Identity()
        self.analysis_layers = []
        planes = widths[0]
        for stage, (out_planes, count) in enumerate(zip(widths, blocks), start=1):
            layer = []
            for index in range(count):
                stride = 2 if stage > 1 and index == 0 else 1
                shortcut = None
                if stride != 1 or planes != out_planes:
                    shortcut = nn.Sequential(nn.Conv2d(planes, out_planes, 1, stride=stride, bias=False),
                                             nn.BatchNorm2d(out_planes))
                layer.append(BasicBlock(planes, out_planes, stride, shortcut))
                planes = out_planes
                self.analysis_layers.append(f"layer{stage}.{index}")
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
        self.stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(1, self.stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


# The learning rate is for the batch given: 0.1 x batch / 256.
@register_model("resnet18", options={"init": "torchvision", **IMAGENET_OPTIONS, "input_size": 224},
                training=dict(data="imagenet", optimizer="sgd_momentum", lr=0.1, schedule="step:30,60,80",
                              batch_size=256, epochs=90, weight_decay=1e-4, augment=True, patience=None),
                training_options={"input_size": 224}, compress_refusal=RESIDUAL)
def resnet18(width: float, *, num_classes: int, dropout: float, input_size: int) -> ResNet:
    """torchvision's resnet18 at width 1 (11,689,512 parameters with 1000 classes).
    ``input_size`` changes no shape: global average pooling takes any image side."""
    del input_size
    return ResNet(width, (64, 128, 256, 512), (2, 2, 2, 2), imagenet_stem=True,
                  num_classes=num_classes, dropout=dropout)
