"""Candidate operations shared by the search spaces."""
from __future__ import annotations

import torch
from torch import nn


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 dilation: int = 1, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class Zero(nn.Module):
    """The `none` op. Cells skip it (it contributes exactly zero), so it is never called in search."""
    is_zero = True

    def __init__(self, stride: int = 1):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Pool(nn.Sequential):
    def __init__(self, kind: str, channels: int, stride: int = 1, bn: bool = False, affine: bool = True):
        pool = (nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False) if kind == "avg"
                else nn.MaxPool2d(3, stride=stride, padding=1))
        layers = [pool] + ([nn.BatchNorm2d(channels, affine=affine)] if bn else [])
        super().__init__(*layers)


def is_zero_op(op: nn.Module) -> bool:
    return getattr(op, "is_zero", False)


def in_network_format(x: torch.Tensor, stem: nn.Conv2d) -> torch.Tensor:
    """The input in the memory format the network's weights are in (NHWC after
    `model.to(memory_format=torch.channels_last)`, which runs the small convolutions and batch norms
    of a search much faster on a GPU)."""
    if stem.weight.is_contiguous(memory_format=torch.channels_last) and not stem.weight.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    return x
