"""MobileFaceNet (Chen et al. 2018), key-compatible with foamliu/MobileFaceNet's `mobilefacenet.pt`.

(B, 3, 112, 112) ImageNet-normalised RGB -> (B, 128) embedding. ~1.0 M parameters, ~0.23 GMAC/face.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class ConvBNReLU(nn.Sequential):
    def __init__(self, inp: int, oup: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


class DepthwiseSeparableConv(nn.Module):
    def __init__(self, inp: int, oup: int):
        super().__init__()
        self.depthwise = nn.Conv2d(inp, inp, 3, padding=1, groups=inp, bias=False)
        self.pointwise = nn.Conv2d(inp, oup, 1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(inp), nn.BatchNorm2d(oup)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.bn1(self.depthwise(x)))
        return self.relu(self.bn2(self.pointwise(x)))


class GDConv(nn.Module):
    """Global depthwise 7x7 convolution: (B, 512, 7, 7) -> (B, 512, 1, 1)."""

    def __init__(self, channels: int = 512):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 7, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.bn(self.depthwise(x))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == oup
        self.conv = nn.Sequential(ConvBNReLU(inp, hidden, kernel=1),
                                  ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
                                  nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup))

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 1
SETTINGS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class MobileFaceNet(nn.Module):
    embedding_dim = 128

    def __init__(self):
        super().__init__()
        self.conv1 = ConvBNReLU(3, 64, stride=2)                 # (B, 64, 56, 56)
        self.dw_conv = DepthwiseSeparableConv(64, 64)
        blocks, inp = [], 64
        for t, c, n, s in SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        self.features = nn.Sequential(*blocks)                   # (B, 128, 7, 7)
        self.conv2 = ConvBNReLU(128, 512, kernel=1)
        self.gdconv = GDConv(512)                                # (B, 512, 1, 1)
        self.conv3 = nn.Conv2d(512, 128, 1)
        self.bn = nn.BatchNorm2d(128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.dw_conv(self.conv1(x)))
        x = self.bn(self.conv3(self.gdconv(self.conv2(x))))
        return x.flatten(1)                                      # (B, 128)

    def blocks(self) -> list[nn.Module]:
        """The network as 21 blocks in order (conv1, dw_conv, the 15 bottlenecks, conv2, gdconv, conv3, bn):
        running them one after the other is forward() without the final flatten."""
        return [self.conv1, self.dw_conv, *self.features, self.conv2, self.gdconv, self.conv3, self.bn]


def fold_batchnorm(block: nn.Module) -> nn.Module:
    """A copy of `block` (one of MobileFaceNet.blocks()) in eval mode with every BatchNorm that follows a
    convolution folded into it (torch's fuse_conv_bn_eval: eval-mode BatchNorm is a per-channel affine map, so
    the convolution's weights and bias absorb it). The same function up to float rounding, in one op instead of
    two: the frozen face blocks run ~1.6x faster on a CPU. Parameters of the copy need no gradient."""
    b = copy.deepcopy(block).eval()
    pairs = {ConvBNReLU: ("0", "1"), DepthwiseSeparableConv: ("depthwise", "bn1", "pointwise", "bn2"),
             GDConv: ("depthwise", "bn")}
    for m in list(b.modules()):
        last_norm = isinstance(m, nn.Sequential) and isinstance(m[-1], nn.BatchNorm2d)
        names = ("2", "3") if last_norm else pairs.get(type(m), ())
        for conv, bn in zip(names[::2], names[1::2]):        # (InvertedResidual.conv: its last conv and norm)
            setattr(m, conv, fuse_conv_bn_eval(getattr(m, conv), getattr(m, bn)))
            setattr(m, bn, nn.Identity())
    return b.requires_grad_(False)
