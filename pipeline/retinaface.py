"""RetinaFace detectors as batched torch modules: frames in, per-anchor boxes/scores/landmarks out.

`MobileNetRetinaFace` is key-compatible with the Pytorch_Retinaface `mobilenet0.25_Final.pth` release
(WIDER FACE). `ResNet50RetinaFace` wraps the `retina-face` package's PyTorch network (insightface anchors).
Both take RGB uint8 frames (B, 3, H, W) and return (boxes (B, A, 4) xyxy pixels, scores (B, A),
landmarks (B, A, 5, 2) pixels), so anchor decoding is batched and NMS is done by the caller.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval

from avemo.core.errors import ConfigError


def _conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0, kernel: int = 3, act: bool = True):
    layers = [nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(oup)]
    if act:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return nn.Sequential(*layers)


def _conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1):
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class _MobileNetV1(nn.Module):
    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(_conv_bn(3, 8, 2, leaky=0.1), _conv_dw(8, 16, 1), _conv_dw(16, 32, 2),
                                    _conv_dw(32, 32, 1), _conv_dw(32, 64, 2), _conv_dw(64, 64, 1))
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x):
        c1 = self.stage1(x)      # (B, 64, H/8, W/8)
        c2 = self.stage2(c1)     # (B, 128, H/16, W/16)
        c3 = self.stage3(c2)     # (B, 256, H/32, W/32)
        return c1, c2, c3


class _FPN(nn.Module):
    def __init__(self, in_channels=(64, 128, 256), out: int = 64, leaky: float = 0.1):
        super().__init__()
        self.output1 = _conv_bn(in_channels[0], out, leaky=leaky, kernel=1)
        self.output2 = _conv_bn(in_channels[1], out, leaky=leaky, kernel=1)
        self.output3 = _conv_bn(in_channels[2], out, leaky=leaky, kernel=1)
        self.merge1 = _conv_bn(out, out, leaky=leaky)
        self.merge2 = _conv_bn(out, out, leaky=leaky)

    def forward(self, feats):
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"))
        return o1, o2, o3


class _SSH(nn.Module):
    def __init__(self, inp: int = 64, out: int = 64, leaky: float = 0.1):
        super().__init__()
        self.conv3X3 = _conv_bn(inp, out // 2, act=False)
        self.conv5X5_1 = _conv_bn(inp, out // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn(out // 4, out // 4, act=False)
        self.conv7X7_2 = _conv_bn(out // 4, out // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn(out // 4, out // 4, act=False)

    def forward(self, x):
        c5_1 = self.conv5X5_1(x)
        c7_2 = self.conv7X7_2(c5_1)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), self.conv7x7_3(c7_2)], dim=1))


class _Head(nn.Module):
    def __init__(self, inp: int, out: int):
        super().__init__()
        self.conv1x1 = nn.Conv2d(inp, out, 1)

    def forward(self, x):
        return self.conv1x1(x).permute(0, 2, 3, 1).flatten(1, 2)  # (B, H*W, anchors*k)


class MobileNetRetinaFace(nn.Module):
    """RetinaFace-MobileNet0.25 (Pytorch_Retinaface); input BGR minus (104, 117, 123)."""

    min_sizes = ((16, 32), (64, 128), (256, 512))
    steps = (8, 16, 32)
    variances = (0.1, 0.2)
    mean_bgr = (104.0, 117.0, 123.0)

    def __init__(self):
        super().__init__()
        self.body = _MobileNetV1()
        self.fpn = _FPN()
        self.ssh1, self.ssh2, self.ssh3 = _SSH(), _SSH(), _SSH()
        self.ClassHead = nn.ModuleList([_Head(64, 4) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(64, 8) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(64, 20) for _ in range(3)])
        self._priors: dict = {}

    def priors(self, height: int, width: int, device, dtype) -> torch.Tensor:
        """(A, 4) anchors cx, cy, w, h in pixels, in the order the heads emit them."""
        key = (height, width, str(device), dtype)
        if key not in self._priors:
            chunks = []
            for step, sizes in zip(self.steps, self.min_sizes):
                fh, fw = math.ceil(height / step), math.ceil(width / step)
                ys, xs = torch.meshgrid(torch.arange(fh, device=device), torch.arange(fw, device=device),
                                        indexing="ij")
                centers = torch.stack([(xs + 0.5) * step, (ys + 0.5) * step], dim=-1).reshape(-1, 1, 2)
                wh = torch.tensor([[s, s] for s in sizes], device=device, dtype=torch.float32)
                centers = centers.expand(-1, len(sizes), 2)
                chunks.append(torch.cat([centers, wh.expand_as(centers)], dim=-1).reshape(-1, 4))
            self._priors[key] = torch.cat(chunks).to(dtype)
        return self._priors[key]

    def forward(self, frames: torch.Tensor):
        # frames: (B, 3, H, W) RGB uint8 or float 0..255
        x = frames.flip(1).float()
        x = x - torch.tensor(self.mean_bgr, device=x.device).view(1, 3, 1, 1)
        feats = self.fpn(self.body(x))
        feats = (self.ssh1(feats[0]), self.ssh2(feats[1]), self.ssh3(feats[2]))
        loc = torch.cat([h(f).reshape(f.shape[0], -1, 4) for h, f in zip(self.BboxHead, feats)], dim=1)
        conf = torch.cat([h(f).reshape(f.shape[0], -1, 2) for h, f in zip(self.ClassHead, feats)], dim=1)
        ldm = torch.cat([h(f).reshape(f.shape[0], -1, 10) for h, f in zip(self.LandmarkHead, feats)], dim=1)
        pri = self.priors(frames.shape[2], frames.shape[3], loc.device, loc.dtype)  # (A, 4)
        v0, v1 = self.variances
        centers = pri[:, :2] + loc[..., :2] * v0 * pri[:, 2:]
        sizes = pri[:, 2:] * torch.exp(loc[..., 2:] * v1)
        boxes = torch.cat([centers - sizes / 2, centers + sizes / 2], dim=-1)        # (B, A, 4)
        landmarks = pri[:, None, :2] + ldm.reshape(*ldm.shape[:2], 5, 2) * v0 * pri[:, None, 2:]
        scores = torch.softmax(conf, dim=-1)[..., 1]                                  # (B, A)
        return boxes, scores, landmarks


class ResNet50RetinaFace(nn.Module):
    """The `retina-face` package's ResNet-50 network with insightface anchors, decoded in batch."""

    base_anchors = {32: ((-248.0, -248.0, 263.0, 263.0), (-120.0, -120.0, 135.0, 135.0)),
                    16: ((-56.0, -56.0, 71.0, 71.0), (-24.0, -24.0, 39.0, 39.0)),
                    8: ((-8.0, -8.0, 23.0, 23.0), (0.0, 0.0, 15.0, 15.0))}

    def __init__(self):
        super().__init__()
        try:
            from retinaface.model.retinaface_pth_model import RetinaFace as _Net
        except ImportError as exc:  # the optional accurate backend
            raise ConfigError(f"face.backend=resnet50 needs the retina-face package: {exc}") from None
        self.net = _Net()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, frames: torch.Tensor):
        x = frames.float().permute(0, 2, 3, 1)  # the package's network takes RGB 0..255 NHWC
        outs = self.net(x)
        all_boxes, all_scores, all_ldm = [], [], []
        for i, stride in enumerate((32, 16, 8)):
            cls, bbox, ldm = outs[3 * i], outs[3 * i + 1], outs[3 * i + 2]  # (B, h, w, C)
            b, h, w, _ = bbox.shape
            base = torch.tensor(self.base_anchors[stride], device=x.device)  # (2, 4)
            ys, xs = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device),
                                    indexing="ij")
            shift = torch.stack([xs, ys, xs, ys], dim=-1).reshape(h, w, 1, 4) * stride
            anchors = (shift + base).reshape(-1, 4)                       # (h*w*2, 4)
            aw, ah = anchors[:, 2] - anchors[:, 0] + 1, anchors[:, 3] - anchors[:, 1] + 1
            acx, acy = anchors[:, 0] + 0.5 * (aw - 1), anchors[:, 1] + 0.5 * (ah - 1)
            d = bbox.reshape(b, -1, 4)
            cx, cy = d[..., 0] * aw + acx, d[..., 1] * ah + acy
            pw, ph = torch.exp(d[..., 2]) * aw, torch.exp(d[..., 3]) * ah
            all_boxes.append(torch.stack([cx - 0.5 * (pw - 1), cy - 0.5 * (ph - 1),
                                          cx + 0.5 * (pw - 1), cy + 0.5 * (ph - 1)], dim=-1))
            all_scores.append(cls[..., 2:].reshape(b, -1))
            lm = ldm.reshape(b, -1, 5, 2)
            all_ldm.append(torch.stack([lm[..., 0] * aw[:, None] + acx[:, None],
                                        lm[..., 1] * ah[:, None] + acy[:, None]], dim=-1))
        return torch.cat(all_boxes, 1), torch.cat(all_scores, 1), torch.cat(all_ldm, 1)


BACKENDS = {"mobilenet0.25": MobileNetRetinaFace, "resnet50": ResNet50RetinaFace}


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Inference only: every Conv2d followed by a BatchNorm2d in an nn.Sequential becomes one Conv2d with the
    normalisation folded into its weights (the same outputs, to float rounding; one pass over the
    activations fewer). `module` must be in eval mode; returns it, its children replaced."""
    for name, child in module.named_children():
        setattr(module, name, fold_batchnorm(child))
    if not isinstance(module, nn.Sequential):
        return module
    layers: list[nn.Module] = []
    for layer in module:
        if isinstance(layer, nn.BatchNorm2d) and layers and isinstance(layers[-1], nn.Conv2d):
            layers[-1] = fuse_conv_bn_eval(layers[-1], layer)
        else:
            layers.append(layer)
    return nn.Sequential(*layers)
