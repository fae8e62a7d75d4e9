"""Candidate operations of the DARTS cell space (and RobustDARTS' `noise`).

`affine` is False in search cells and True in the from-scratch evaluation network. In search
cells a pool is followed by an affine-free BN (`pool_bn=True`), as the DARTS search code does,
so that pooled outputs live on the same scale as the BN-ended conv ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common.errors import NasflowError
from .ops import Pool, ReLUConvBN, Zero

# Canonical column order: the DARTS primitive order with RobustDARTS' `noise` after `none`.
ALL_OPS = ("none", "noise", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
           "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")

__all__ = ["ALL_OPS", "DilConv", "FactorizedReduce", "NoiseOp", "ReLUConvBN", "SepConv", "make_op"]


def _dw_pw_block(c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool) -> list[nn.Module]:
    """ReLU -> depthwise conv -> pointwise conv -> BN."""
    return [
        nn.ReLU(inplace=False),
        nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=padding, dilation=dilation, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out, affine=affine),
    ]


class DilConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__(*_dw_pw_block(c_in, c_out, kernel, stride, padding, dilation, affine))


class SepConv(nn.Sequential):
    """Two stacked depthwise-separable blocks; only the first one strides."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(*_dw_pw_block(c_in, c_in, kernel, stride, padding, 1, affine),
                         *_dw_pw_block(c_in, c_out, kernel, 1, padding, 1, affine))


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing every other pixel: two 1x1 stride-2 convs, the second
    on the input shifted by one pixel, concatenated along channels."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        if c_out % 2:
            raise NasflowError(f"FactorizedReduce needs an even channel count, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        # zero-padding the shifted copy keeps both halves the same size on odd resolutions;
        # on even ones the padded row/column is never sampled, so nothing changes there
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class NoiseOp(nn.Module):
    """RobustDARTS' S4 `noise` op: ignores its input's values and returns N(mean, std) noise of the
    (strided) input's shape. Like the reference it does so in train and eval mode alike, and the
    noise carries no gradient to the input (the edge's mixing weight still gets one)."""

    def __init__(self, stride: int = 1, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.stride, self.mean, self.std = stride, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return torch.randn(x.shape, dtype=x.dtype, device=x.device) * self.std + self.mean


def make_op(name: str, channels: int, stride: int, affine: bool, pool_bn: bool) -> nn.Module:
    """One candidate op at `channels` (in == out). `pool_bn` adds the search cells' BN after pools."""
    c = channels
    if name == "none":
        return Zero(stride)
    if name == "noise":
        return NoiseOp(stride)
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        return Pool(name[:3], c, stride=stride, bn=pool_bn, affine=False)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine=affine)
    if name == "sep_conv_3x3":
        return SepConv(c, c, 3, stride, 1, affine=affine)
    if name == "sep_conv_5x5":
        return SepConv(c, c, 5, stride, 2, affine=affine)
    if name == "dil_conv_3x3":
        return DilConv(c, c, 3, stride, 2, 2, affine=affine)
    if name == "dil_conv_5x5":
        return DilConv(c, c, 5, stride, 4, 2, affine=affine)
    raise NasflowError(f"unknown DARTS op {name!r}; valid ops: {', '.join(ALL_OPS)}")
