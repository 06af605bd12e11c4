"""Small CNNs written in plain torch (no torchvision), sized by the data: input channels and image
size follow the dataset, the number of outputs follows its labels.

Every model keeps its layers under stable names (``features.conv1``, ``layer2.0``, ...), so a
layer can be frozen (``--freeze``) or have its feature maps exported (``--features``) by name;
:func:`layer_names` lists them.

Models:

``cnn``     a plain CNN: conv-BN-ReLU pairs with two max-pools, global average pool, linear.
            About 0.1 M parameters at the default width; fits 8x8 up to a few hundred pixels.
``resnet``  a small ResNet: a 3x3 stem, three stages of two basic residual blocks (stride 1, 2, 2),
            global average pool, linear. About 0.7 M parameters at the default width.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from cnnspark.errors import ConfigError


def _conv_bn_relu(cin: int, cout: int, *, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
            bn=nn.BatchNorm2d(cout),
            relu=nn.ReLU(inplace=True),
        )
    )


class SmallCNN(nn.Module):
    """conv1, conv2, pool, conv3, conv4, pool (skipped below 4x4), global average pool, dropout, fc."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, *, width: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv1"] = _conv_bn_relu(in_channels, width)
        layers["conv2"] = _conv_bn_relu(width, width)
        size = image_size
        if size >= 4:
            layers["pool1"] = nn.MaxPool2d(2)
            size //= 2
        layers["conv3"] = _conv_bn_relu(width, 2 * width)
        layers["conv4"] = _conv_bn_relu(2 * width, 2 * width)
        if size >= 4:
            layers["pool2"] = nn.MaxPool2d(2)
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.fc(self.dropout(x))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """stem, layer1 (stride 1), layer2 (stride 2), layer3 (stride 2), global average pool, fc.

    Strides are dropped for stages whose input would fall under 2x2, so tiny images still work.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, *, width: int = 32, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False),
                bn=nn.BatchNorm2d(width),
                relu=nn.ReLU(inplace=True),
            )
        )
        size, cin = image_size, width
        stages = []
        for index, (cout, stride) in enumerate(((width, 1), (2 * width, 2), (4 * width, 2)), start=1):
            if stride == 2 and size < 4:
                stride = 1
            size = (size + stride - 1) // stride
            stage = nn.Sequential(*[BasicBlock(cin if b == 0 else cout, cout, stride=stride if b == 0 else 1) for b in range(blocks)])
            stages.append((f"layer{index}", stage))
            cin = cout
        for name, stage in stages:
            self.add_module(name, stage)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


ModelFactory = Callable[[int, int, int], nn.Module]

MODELS: dict[str, ModelFactory] = {
    "cnn": lambda in_channels, num_classes, image_size: SmallCNN(in_channels, num_classes, image_size),
    "cnn-tiny": lambda in_channels, num_classes, image_size: SmallCNN(in_channels, num_classes, image_size, width=8, dropout=0.0),
    "resnet": lambda in_channels, num_classes, image_size: SmallResNet(in_channels, num_classes, image_size),
    "resnet-tiny": lambda in_channels, num_classes, image_size: SmallResNet(in_channels, num_classes, image_size, width=8, blocks=1),
}
"""Model name -> constructor ``(in_channels, num_classes, image_size) -> nn.Module``."""

DEFAULT_MODEL = "cnn"


def get_model(name: str, *, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Build the model ``name`` for images of ``in_channels`` x ``image_size`` x ``image_size``."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    if in_channels < 1 or num_classes < 1 or image_size < 1:
        raise ConfigError(
            f"model {name!r} needs positive in_channels, num_classes and image_size, got "
            f"{in_channels}, {num_classes}, {image_size}"
        )
    if num_classes < 2:
        raise ConfigError(f"training a classifier needs at least 2 labels, the dataset has {num_classes}")
    return MODELS[name](in_channels, num_classes, image_size)


def layer_names(model: nn.Module) -> list[str]:
    """Names of the model's submodules, in order (what ``--freeze`` and ``--features`` accept)."""
    return [name for name, _ in model.named_modules() if name]


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; ConfigError listing the choices if there is none."""
    modules = dict(model.named_modules())
    if not name or name not in modules:
        top = [n for n in layer_names(model) if "." not in n or n.count(".") == 1]
        raise ConfigError(f"the model has no layer {name!r}; layers include {', '.join(top)}")
    return modules[name]


def freeze(model: nn.Module, prefixes: tuple[str, ...] | list[str]) -> list[str]:
    """Stop training the layers named by ``prefixes`` (and everything under them).

    Their parameters get ``requires_grad=False``; :func:`set_train_mode` keeps them in eval mode,
    so BatchNorm statistics stay fixed too and their bytes do not change between checkpoints.
    Returns the frozen parameter names.
    """
    for prefix in prefixes:
        find_layer(model, prefix)
    frozen = []
    for name, param in model.named_parameters():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def set_train_mode(model: nn.Module, frozen_prefixes: tuple[str, ...] | list[str]) -> None:
    """``model.train()`` except for frozen layers, which stay in eval mode."""
    model.train()
    modules = dict(model.named_modules())
    for prefix in frozen_prefixes:
        modules[prefix].eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
