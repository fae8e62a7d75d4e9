"""Candidate operations shared by the search spaces."""
from __future__ import annotations

import torch
import torch.nn.functional as F
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


class AvgPool3x3(nn.AvgPool2d):
    """3x3 average pooling, padding 1, borders averaged over the pixels inside the image
    (`count_include_pad=False`), as the papers' code pools.

    On CPU it is computed as a depthwise convolution with a ones kernel divided by the per-pixel
    count of pixels inside the image: the same numbers up to float rounding, and about 6x faster
    forward and backward than torch's CPU pooling kernel, which is a third of a CPU search step.
    Elsewhere torch's own kernel (cuDNN) runs. No parameters or buffers: checkpoints are those of
    `nn.AvgPool2d`."""

    def __init__(self, stride: int = 1):
        super().__init__(3, stride=stride, padding=1, count_include_pad=False)
        self._constants: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4:
            return super().forward(x)
        ones, inverse_count = self._constants_for(x)
        return F.conv2d(x, ones, stride=self.stride, padding=1, groups=x.shape[1]) * inverse_count

    def _constants_for(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # tensors made under inference_mode cannot be saved for backward, hence the flag in the key
        key = (x.shape[1], x.shape[2], x.shape[3], x.dtype, torch.is_inference_mode_enabled())
        if key not in self._constants:
            ones = torch.ones(x.shape[1], 1, 3, 3, dtype=x.dtype)
            count = F.conv2d(torch.ones(1, 1, x.shape[2], x.shape[3], dtype=x.dtype), ones[:1],
                             stride=self.stride, padding=1)
            self._constants[key] = (ones, 1.0 / count)
        return self._constants[key]


class Pool(nn.Sequential):
    def __init__(self, kind: str, channels: int, stride: int = 1, bn: bool = False, affine: bool = True):
        pool = AvgPool3x3(stride) if kind == "avg" else nn.MaxPool2d(3, stride=stride, padding=1)
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
