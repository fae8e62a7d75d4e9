"""Binary activation codes and the NASWOT kernel built from them.

For a batch of N inputs, a layer (or an op) maps sample n to a binary code S_n = 1[a_n > 0] of
length L, its activation pattern flattened over (C, H, W). Two samples are compared by the
Hamming distance H[i, j] = |S_i - S_j|_1; NASWOT's kernel is the agreement count L - H[i, j]
(L on the diagonal), summed over layers, and the score is log|det| of that sum.

This module holds the kernel arithmetic (exact: integer counts in float64) and the capture of
codes from the cells of a supernet with forward hooks, so that the network code needs no change.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..spaces import darts, nb201
from ..spaces.ops import is_zero_op

FORMS = ("agreement", "literal")
CODE_SOURCES = ("op_output", "relu_input")


def binary_codes(activation: torch.Tensor) -> torch.Tensor:
    """(N, ...) activations -> (N, L) float64 0/1 codes, 1 where the unit is active (> 0)."""
    return (activation.detach().flatten(1) > 0).to(torch.float64)


def hamming_matrix(codes: torch.Tensor) -> torch.Tensor:
    """(N, L) 0/1 codes -> (N, N) float64 Hamming distances |S_i - S_j|_1.

    |S_i - S_j|_1 = |S_i| + |S_j| - 2 S_i.S_j; in float64 every count up to 2^53 is exact, so the
    diagonal is exactly 0 and no precision mode (TF32 on GPUs) can round a distance.
    """
    codes = codes.to(torch.float64)
    ones = codes.sum(dim=1)
    return ones[:, None] + ones[None, :] - 2.0 * (codes @ codes.T)


def agreement_kernel(codes: torch.Tensor) -> torch.Tensor:
    """NASWOT's per-layer kernel K[i, j] = L - H[i, j]: the number of units on which i and j agree.

    Equal to x x^T + (1 - x)(1 - x)^T, the form the NASWOT code accumulates.
    """
    return codes.shape[1] - hamming_matrix(codes)


def log_abs_det(kernel: torch.Tensor) -> float:
    """log|det K| in float64 (slogdet's second output, as NASWOT's `hooklogdet`); -inf if singular."""
    return float(torch.linalg.slogdet(kernel.to(torch.float64))[1])


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Run `model` in train mode (BN normalises with the batch's own statistics, as NASWOT and the
    search codes do) under no_grad, then restore its mode and every buffer (BN running statistics),
    so that scoring leaves the supernet state exactly as it found it."""
    was_training = model.training
    saved = {name: buf.clone() for name, buf in model.named_buffers()}
    model.train()
    try:
        with torch.no_grad():
            yield
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                buf.copy_(saved[name])
        model.train(was_training)


# --------------------------------------------------------------------------- op sites of a supernet


@dataclass(frozen=True)
class OpSite:
    """One candidate op module of one cell: where its codes come from and which alpha weighs it."""
    cell_type: str    # key of the weights/alpha/mask dicts ("cell"; "normal" / "reduce")
    cell: int         # position of the cell in the network
    edge: int         # row of alpha
    op: int           # column of alpha
    module: nn.Module


def op_sites(model: nn.Module) -> list[OpSite]:
    """Every candidate op of every search cell of an NB201 supernet or a DARTS search network."""
    sites: list[OpSite] = []
    cells = [m for m in model.modules() if isinstance(m, (nb201.SearchCell, darts.SearchCell))]
    if not cells:
        raise TypeError(f"{type(model).__name__} has no NB201 or DARTS search cells to take codes from")
    op_names = tuple(model.op_names)
    for c, cell in enumerate(cells):
        if isinstance(cell, nb201.SearchCell):
            for e, key in enumerate(nb201.EDGE_KEYS):
                sites.extend(OpSite("cell", c, e, o, op) for o, op in enumerate(cell.edges[key]))
        else:
            kind = "reduce" if cell.reduction else "normal"
            for e, ops in enumerate(cell.edges):
                sites.extend(OpSite(kind, c, e, op_names.index(name), op) for name, op in ops.items())
    return sites


# --------------------------------------------------------------------------- captured kernels


@dataclass
class EdgeKernels:
    """What one forward leaves behind, reduced to what every form of the proxy needs.

    Per (cell type, edge, op): the Hamming matrix and the code length, each summed over the cells
    of that type (alpha is shared by them, so the sum factors out of the weighting). Per (cell type,
    edge): the edge's code length summed over the cells where at least one op of it produced codes
    (the literal form's diagonal). Ops that did not run (masked) or are `none` leave no entry.
    """
    batch: int
    device: torch.device | str = "cpu"
    hamming: dict[tuple[str, int, int], torch.Tensor] = field(default_factory=dict)
    length: dict[tuple[str, int, int], float] = field(default_factory=lambda: defaultdict(float))
    edge_length: dict[tuple[str, int], float] = field(default_factory=lambda: defaultdict(float))

    def kernel(self, weights: Mapping[str, torch.Tensor], form: str = "agreement") -> torch.Tensor:
        """sum_{c,e} K^{c,e} in float64, with per-op weight w[e, o] = weights[cell type][e, o].

        agreement: K^{c,e}[i, j] = sum_o w[e,o] * (L_o - H_o[i, j])   (diagonal sum_o w[e,o] L_o)
        literal:   K^{c,e}[i, j] = sum_o w[e,o] * H_o[i, j] off the diagonal, L_e on it (paper Eq. 8-9)
        No op with codes gives the zero matrix (log|det| = -inf).
        """
        if form not in FORMS:
            raise ValueError(f"unknown NetPerfProxy form {form!r}; valid: {', '.join(FORMS)}")
        w = {k: v.detach().to("cpu", torch.float64) for k, v in weights.items()}   # one copy, no per-op sync
        total = torch.zeros(self.batch, self.batch, dtype=torch.float64, device=self.device)
        for (kind, e, o), hamming in self.hamming.items():
            weight = float(w[kind][e, o])
            if form == "agreement":
                total += weight * (self.length[(kind, e, o)] - hamming)
            else:
                total += weight * hamming
        if form == "literal":
            total += torch.eye(self.batch, dtype=torch.float64, device=self.device) * sum(self.edge_length.values())
        return total


def capture_edge_kernels(model: nn.Module, x: torch.Tensor, forward: Callable[[torch.Tensor], object],
                         code_source: str = "op_output", sites: Sequence[OpSite] | None = None) -> EdgeKernels:
    """Call `forward(x)` (one forward of `model`) with hooks on the cells' op modules; collect codes.

    code_source
      op_output   S = 1[o(x) > 0] of the op's output (METHODS.md 4.3, `hpe.npp_code_source`).
      relu_input  S = the concatenated inputs of the ReLUs inside the op (NASWOT's own code, per
                  op); ops without a ReLU (skip, pools) then produce no codes.
    Only ops the forward calls are seen: masked ops never run and `none` is skipped by the cells
    (and excluded here too), so neither contributes. If no op yields codes the result is empty.
    Every op the forward calls counts, including one whose output reaches the logits only through
    `none` edges (an edge into a node whose outgoing edges are all `none`). That is NASWOT's
    backward-reach rule (`visited_backwards`) on the reference networks, where `none` is
    `x.mul(0.)` and the backward pass goes through it.
    """
    if code_source not in CODE_SOURCES:
        raise ValueError(f"unknown code source {code_source!r}; valid: {', '.join(CODE_SOURCES)}")
    sites = op_sites(model) if sites is None else sites
    kernels = EdgeKernels(batch=x.shape[0], device=x.device)
    site_length: dict[tuple[str, int, int, int], float] = defaultdict(float)

    def record(site: OpSite, activation: torch.Tensor) -> None:
        codes = binary_codes(activation)
        key = (site.cell_type, site.edge, site.op)
        hamming = hamming_matrix(codes)
        kernels.hamming[key] = hamming if key not in kernels.hamming else kernels.hamming[key] + hamming
        kernels.length[key] += codes.shape[1]
        site_length[(site.cell_type, site.cell, site.edge, site.op)] += codes.shape[1]

    handles = []
    for site in sites:
        if is_zero_op(site.module):
            continue
        if code_source == "op_output":
            handles.append(site.module.register_forward_hook(
                lambda _m, _inputs, output, site=site: record(site, output)))
        else:
            # a pre-hook sees the ReLU's input before an in-place ReLU could overwrite it
            handles.extend(relu.register_forward_pre_hook(lambda _m, inputs, site=site: record(site, inputs[0]))
                           for relu in site.module.modules() if isinstance(relu, nn.ReLU))
    try:
        forward(x)
    finally:
        for handle in handles:
            handle.remove()
    # ops of one edge share its output shape (op_output); with relu_input they may differ: take the longest
    per_edge: dict[tuple[str, int, int], float] = defaultdict(float)
    for (kind, c, e, _o), length in site_length.items():
        per_edge[(kind, c, e)] = max(per_edge[(kind, c, e)], length)
    for (kind, _c, e), length in per_edge.items():
        kernels.edge_length[(kind, e)] += length
    return kernels
