"""ResNet trunks (He et al. 2016, torchvision's v1.5 variant) cut after ``layer1``, ``layer2`` or ``layer3``,
written out here so that the 2D pose model needs no ``import torchvision`` (about 2 CPU-seconds per process).

The modules are torchvision's (``torchvision.models.resnet``; checked against 0.29) layer for layer: the same attribute
names, order and shapes, so a state_dict of torchvision's ``nn.Sequential(conv1, bn1, relu, maxpool, layer1, ...)``
loads into :func:`resnet_trunk`'s with ``strict=True`` and ImageNet weights load with :func:`load_resnet_weights`.
The initialisation is torchvision's default (convolutions ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``,
BatchNorm weight 1, bias 0) with the same random draws: torchvision's constructor first builds every module, each
convolution and ``fc`` drawing its default ``kaiming_uniform_`` init, including the dropped ``layer4`` and
``fc``, then redraws every convolution ``kaiming_normal_`` in module order. :func:`resnet_trunk` makes the draws
of the dropped modules on scratch tensors of the same sizes (same ops, so the generator advances identically), so
under the same seed the kept parameters are bit-identical to torchvision's and the generator ends where
torchvision's constructor leaves it: whatever is built after the trunk starts from the same random state too.
The replayed draws cost what torchvision's constructor spends on them (~0.3 CPU-s for resnet18).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

__all__ = ["RESNETS", "TORCHVISION_WIDTH", "TRUNK_STRIDES", "BasicBlock", "Bottleneck", "load_resnet_weights",
           "resnet_trunk"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions and a shortcut (ResNet-18/34); ``stride`` on the first convolution."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3, 1×1 expand (×4) and a shortcut (ResNet-50); ``stride`` on the 3×3 convolution (v1.5)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


RESNETS: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}
TRUNK_STRIDES = {4: 1, 8: 2, 16: 3}  # output stride → residual stages kept (layer1, layer1-2, layer1-3)
TORCHVISION_WIDTH = 64  # channels of conv1 and layer1 (layer2-4: 2, 4, 8 times as many): torchvision's ResNets
STAGE_NAMES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")  # torchvision's names, in order
N_CLASSES = 1000  # torchvision's fc, whose construction draws the trunk replays


def _stage_specs(name: str, width: int = TORCHVISION_WIDTH) -> Iterator[tuple[int, int, int, int]]:
    """``(stage, inplanes, planes, stride)`` of each of the four residual stages, as torchvision's ``_make_layer``
    (``width`` 64: torchvision's planes 64, 128, 256, 512)."""
    block = RESNETS[name][0]
    inplanes = width
    for stage, stride in enumerate((1, 2, 2, 2)):
        planes = width * 2**stage
        yield stage, inplanes, planes, stride
        inplanes = planes * block.expansion


def make_layer(block: type[BasicBlock | Bottleneck], inplanes: int, planes: int, blocks: int,
               stride: int = 1) -> nn.Sequential:
    """torchvision's ``ResNet._make_layer``: the shortcut projection is built (and draws) before the first block."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(conv1x1(inplanes, planes * block.expansion, stride),
                                   nn.BatchNorm2d(planes * block.expansion))
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def _conv_shapes(name: str, stages: Iterable[int],
                 width: int = TORCHVISION_WIDTH) -> tuple[list[torch.Size], list[torch.Size]]:
    """Weight shapes of the convolutions of residual ``stages`` in torchvision's construction order (shortcut
    first in a stage's first block) and in module order (shortcut last), read off a copy built on the meta
    device (which draws no random numbers)."""
    block, depths = RESNETS[name]
    built, ordered = [], []
    with torch.device("meta"):
        for stage, inplanes, planes, stride in _stage_specs(name, width):
            if stage not in stages:
                continue
            for module in make_layer(block, inplanes, planes, depths[stage], stride):
                convs = [m.weight.shape for m in module.modules() if isinstance(m, nn.Conv2d)]
                ordered += convs
                built += convs[-1:] + convs[:-1] if module.downsample is not None else convs
    return built, ordered


@torch.no_grad()
def _replay_draws(name: str, dropped: Iterable[int], kept_convs: list[nn.Conv2d], width: int) -> None:
    """The random draws of torchvision's ``ResNet.__init__`` after the kept modules are built: the default
    ``kaiming_uniform_`` of the dropped stages' convolutions and of ``fc`` (weight, then bias), then
    ``kaiming_normal_`` of every convolution in module order, of the kept ones for real and of the dropped
    ones on scratch tensors. Bounds and standard deviations do not change which numbers a generator hands out,
    only each tensor's op and size do, so the scratch draws use unit ones."""
    built, ordered = _conv_shapes(name, dropped, width)
    channels = 8 * width * RESNETS[name][0].expansion
    for shape in [*built, (N_CLASSES, channels)]:
        torch.empty(shape).uniform_()
    torch.empty(N_CLASSES).uniform_()  # fc.bias
    for conv in kept_convs:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    for shape in ordered:
        torch.empty(shape).normal_()


def resnet_trunk(name: str, stride: int, width: int = TORCHVISION_WIDTH) -> tuple[nn.Sequential, int]:
    """``nn.Sequential(conv1, bn1, relu, maxpool, layer1[, layer2[, layer3]])`` of torchvision's ``name``
    (resnet18, resnet34, resnet50) cut at output ``stride`` 4, 8 or 16, randomly initialised as torchvision's
    ``resnet*(weights=None)`` is (see the module docstring), and its output channels. Its state_dict keys are
    the ``nn.Sequential``'s (``0.weight``, ``4.0.conv1.weight``, ...), as torchvision's modules in such a
    Sequential have them; :func:`load_resnet_weights` maps torchvision's ResNet keys onto it.

    ``width`` is the base channel count (conv1 and layer1; layer2 and layer3 have 2 and 4 times as many, times
    the block's expansion). Only the default, torchvision's 64, gives torchvision's modules, parameter shapes
    and bit-identical init (and so can take its ImageNet weights); any other width is the same architecture
    scaled, initialised by the same procedure (same ops in the same order on tensors of the scaled sizes), and
    costs about ``(width / 64)²`` of the convolutions' FLOPs."""
    if name not in RESNETS:
        raise ValueError(f"ResNet must be one of {tuple(RESNETS)}, got {name!r}")
    if stride not in TRUNK_STRIDES:
        raise ValueError(f"ResNet trunk stride must be one of {tuple(TRUNK_STRIDES)}, got {stride}")
    if width < 1:
        raise ValueError(f"ResNet trunk width must be a positive number of channels, got {width}")
    block, depths = RESNETS[name]
    n_stages = TRUNK_STRIDES[stride]
    modules: list[nn.Module] = [
        nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    ]
    for stage, inplanes, planes, layer_stride in _stage_specs(name, width):
        if stage < n_stages:
            modules.append(make_layer(block, inplanes, planes, depths[stage], layer_stride))
    trunk = nn.Sequential(*modules)
    _replay_draws(name, range(n_stages, 4), [m for m in trunk.modules() if isinstance(m, nn.Conv2d)], width)
    for module in trunk.modules():  # BatchNorm2d's own defaults already, set as torchvision sets them
        if isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)
    return trunk, width * block.expansion * 2 ** (n_stages - 1)


def load_resnet_weights(trunk: nn.Sequential, state_dict: Mapping[str, Tensor]) -> None:
    """Load a torchvision ResNet state_dict (``conv1.weight``, ``layer1.0.conv1.weight``, ...; e.g. ImageNet
    weights) into a :func:`resnet_trunk`: each kept module strictly, the rest (deeper stages, ``fc``) must be
    exactly what the cut drops."""
    names = STAGE_NAMES[: len(trunk)]
    for name, module in zip(names, trunk):
        prefix = name + "."
        module.load_state_dict({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)},
                               strict=True)
    unused = {k.split(".", 1)[0] for k in state_dict if k.split(".", 1)[0] not in names}
    expected = set(STAGE_NAMES[len(trunk):]) | {"layer4", "fc"}
    if not unused <= expected:
        raise RuntimeError(f"unexpected keys for a ResNet trunk: modules {sorted(unused - expected)}")
