"""Fixed (derived) networks trained from scratch: the DARTS CIFAR/ImageNet networks built from a
genotype, the NB201 cell network built from an arch string, and their size and cost counters.

Every network's forward returns (logits, logits_aux); logits_aux is None unless an auxiliary
head exists and the network is in training mode.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..spaces import nb201
from ..spaces.darts_ops import FactorizedReduce, ReLUConvBN, make_op
from ..spaces.genotype import Genotype
from ..spaces.ops import Zero


def drop_path(x: torch.Tensor, prob: float) -> torch.Tensor:
    """Zero whole samples of a branch with probability `prob`, rescaling the kept ones."""
    keep = 1.0 - prob
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x / keep * mask


class GenotypeCell(nn.Module):
    """A DARTS cell with the genotype's two ops per node, affine BN, drop path on non-identity ops."""

    def __init__(self, genotype: Genotype, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0)
        pairs, self.concat = genotype.cell("reduce" if reduction else "normal")
        self.inputs = tuple(j for _, j in pairs)
        self.ops = nn.ModuleList(make_op(op, c, 2 if reduction and j < 2 else 1, affine=True, pool_bn=False)
                                 for op, j in pairs)
        self.multiplier = len(self.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for k in range(0, len(self.ops), 2):
            node = 0
            for op, j in ((self.ops[k], self.inputs[k]), (self.ops[k + 1], self.inputs[k + 1])):
                h = op(states[j])
                if self.training and drop_prob > 0 and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                node = node + h
            states.append(node)
        return torch.cat([states[i] for i in self.concat], dim=1)


def _aux_features(c: int, pool_stride: int, second_bn: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.ReLU(inplace=True),
        nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False),
        nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
        nn.Conv2d(128, 768, 2, bias=False),
        *([nn.BatchNorm2d(768)] if second_bn else []),
        nn.ReLU(inplace=True), nn.Flatten())


class AuxiliaryHead(nn.Sequential):
    """DARTS' auxiliary classifier; expects 8x8 inputs on CIFAR, 14x14 on ImageNet. The ImageNet
    head has no second BN, as in the DARTS ImageNet experiments."""

    def __init__(self, c: int, num_classes: int, imagenet: bool = False):
        super().__init__(_aux_features(c, 2 if imagenet else 3, second_bn=not imagenet), nn.Linear(768, num_classes))


class _CellNetwork(nn.Module):
    """Shared body: a stack of genotype cells (reduction at layers//3 and 2*layers//3), an
    auxiliary head after cell 2*layers//3, global average pooling and a linear classifier."""

    def _build_cells(self, genotype: Genotype, c_pp: int, c_p: int, c: int, layers: int, reduction_prev: bool,
                     auxiliary: bool, num_classes: int, imagenet: bool) -> None:
        self._layers, self._auxiliary = layers, auxiliary
        self.cells = nn.ModuleList()
        c_aux = c_p
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c *= 2
            cell = GenotypeCell(genotype, c_pp, c_p, c, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c
            if i == 2 * layers // 3:
                c_aux = c_p
        if auxiliary:
            self.auxiliary_head = AuxiliaryHead(c_aux, num_classes, imagenet)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def _run_cells(self, s0: torch.Tensor, s1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        return self.classifier(self.global_pooling(s1).flatten(1)), logits_aux


class NetworkCIFAR(_CellNetwork):
    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool, genotype: Genotype,
                 drop_path_prob: float = 0.0, stem_multiplier: int = 3):
        super().__init__()
        self.drop_path_prob = drop_path_prob
        c_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        self._build_cells(genotype, c_stem, c_stem, C, layers, False, auxiliary, num_classes, imagenet=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = self.stem(x)
        return self._run_cells(s, s)


class NetworkImageNet(_CellNetwork):
    """Mobile-setting ImageNet network: two stride-2 stems (224 -> 56 -> 28) before the cells."""

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool, genotype: Genotype,
                 drop_path_prob: float = 0.0):
        super().__init__()
        self.drop_path_prob = drop_path_prob
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, C // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C // 2), nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))
        self.stem1 = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(C))
        # stem1 strides, so the first cell's s0 (stem0's output) is reduced like after a reduction cell
        self._build_cells(genotype, C, C, C, layers, True, auxiliary, num_classes, imagenet=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s0 = self.stem0(x)
        return self._run_cells(s0, self.stem1(s0))


class NB201Network(nn.Module):
    """The NB201 cell network of one arch string: the NB201 supernet with affine BN, every edge
    computing only its chosen op at weight 1 (the other ops are removed, so they hold no
    parameters). A one-hot supernet with a single op per edge is exactly the NB201 network."""

    def __init__(self, arch: str, num_classes: int, channels: int = 16, cells_per_stage: int = 5):
        super().__init__()
        self.arch = arch
        chosen = [nb201.OPS.index(op) for op in nb201.str_to_ops(arch)]
        self.net = nb201.Supernet(num_classes, channels, cells_per_stage, nb201.OPS, bn_affine=True, pool_bn=False)
        for cell in self.net.modules():
            if isinstance(cell, nb201.SearchCell):
                for key, o in zip(nb201.EDGE_KEYS, chosen):
                    for other in range(len(nb201.OPS)):
                        if other != o:
                            cell.edges[key][other] = Zero()
        self.register_buffer("weights", nn.functional.one_hot(torch.tensor(chosen), len(nb201.OPS)).float(),
                             persistent=False)
        self.active = [[o] for o in chosen]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.net(x, {"cell": self.weights}, {"cell": self.active}), None


# --------------------------------------------------------------------------- size and cost


def count_params_m(model: nn.Module) -> float:
    """Parameters in millions, without the auxiliary head (as papers report them)."""
    return sum(p.numel() for name, p in model.named_parameters() if "auxiliary" not in name) / 1e6


@torch.no_grad()
def count_flops_m(model: nn.Module, input_size: Sequence[int] = (1, 3, 32, 32)) -> float:
    """Multiply-adds of every Conv2d and Linear for one image, in millions ("FLOPs (M)" in NAS
    papers), counted with forward hooks on an eval-mode forward (no auxiliary head, no drop path).
    BN, pooling, activations and additions are not counted, as in the usual counters."""
    total = 0

    def conv_hook(m: nn.Conv2d, inputs, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inputs, out):
        nonlocal total
        total += out.numel() // out.shape[0] * m.in_features

    handles = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(*input_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total / 1e6
