"""NASWOT, HPE-DARTS' NetPerfProxy, and the per-(edge, op) drops HPE-DARTS prunes by (METHODS.md 4.3).

    NASWOT(Net)       = log|det( sum_{ReLU layers}  (L - H) )|
    NetPerfProxy(Net) = log|det( sum_{cells c, edges e}  K^{c,e} )|
        agreement (default):  K^{c,e}[i, j] = sum_o alpha[e,o] * (L_o - H_o[i, j])
        literal (Eq. 8-9):    K^{c,e}[i, j] = sum_o alpha[e,o] * H_o[i, j]  off the diagonal, L on it
    I(e, o)           = score(full) - score(with (e, o) masked in every cell of its type)

H is the Hamming distance between two samples' binary codes (binary_codes.py). alpha is the
mixing weight the supernet multiplies the op by: the raw alpha under `hpe.mixing = raw_alpha`,
theta = softmax(alpha) under `softmax` (pass `weights` to score with decayed theta). Temporary
removal zeroes one weight and renormalises nothing (METHODS.md 4.3).

All scores use batch statistics in BN (train mode, as NASWOT and the search codes), no grad, and
leave the model's mode and BN running statistics as they were. Every op and ReLU the forward calls
contributes, including one that reaches the logits only through `none` edges. NASWOT's backward
pass reaches those in the reference networks, where `none` is `x.mul(0.)` (see naswot_score).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..common.errors import NasflowError
from ..data.search_data import SearchData
from ..spaces.ops import is_zero_op
from ..supernet.state import SupernetState
from .binary_codes import (CODE_SOURCES, FORMS, EdgeKernels, OpSite, agreement_kernel, batch_statistics, binary_codes,
                           capture_edge_kernels, log_abs_det, op_sites)

__all__ = ["CODE_SOURCES", "FORMS", "naswot_drop", "naswot_score", "netperf_drop", "netperf_proxy", "proxy_batch"]

Weights = Mapping[str, torch.Tensor]
Active = Mapping[str, Sequence[Sequence[int]]]


# --------------------------------------------------------------------------- NASWOT of a plain network


def naswot_score(model: nn.Module, x: torch.Tensor, forward: Callable[[torch.Tensor], object] | None = None,
                 relus: Iterable[nn.Module] | None = None) -> float:
    """NASWOT (Mellor et al., ICML 2021) of a network on one batch `x`.

    Follows the authors' code (BayesWatch/nas-without-training, score_networks.py, score
    `hook_logdet`), not a paraphrase: every call of every ReLU adds, for the binary code
    x = 1[ReLU *input* > 0] flattened per sample, x x^T + (1 - x)(1 - x)^T = L - Hamming to K, and
    the score is slogdet(K)[1] = log|det K| in float64. Like the reference the network stays in
    train mode (BN batch statistics).

    The reference counts a ReLU only if a backward pass has reached it (`visited_backwards`: a
    forward, `y.backward(ones_like(y))` on the logits, then a second forward that accumulates). Its
    networks keep `none` in the autograd graph as `x.mul(0.)`, and the backward goes through it
    (with a zero gradient), so it reaches every ReLU the forward calls. That includes an NB201
    cell whose node 1 feeds only `none` edges: the ReLUs of the ops into node 1 count. The
    supernet cells skip `none` instead. That removes the path from the autograd graph, but the
    reference still counts those ReLUs. So counting every ReLU the forward calls, in one no-grad
    forward, gives the reference's K. A backward pass through the supernet's own graph would drop
    them and give a different score.

    The reference picks the modules to hook by type name ('ReLU' in str(type(module))). In its
    NB201 and DARTS code that also matches the ReLUConvBN class, so each ReLUConvBN input is
    counted a second time. Here only nn.ReLU modules count (METHODS.md 4.3: one code per ReLU
    input).

    forward: how to call the model (default `model(x)`; a supernet needs its weights and mask).
    relus:   which ReLU modules to hook (default: every nn.ReLU in `model`).
    """
    with batch_statistics(model):
        return log_abs_det(_naswot_kernel(model, x, forward, relus))


def _naswot_kernel(model: nn.Module, x: torch.Tensor, forward: Callable[[torch.Tensor], object] | None,
                   relus: Iterable[nn.Module] | None) -> torch.Tensor:
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)] if relus is None else list(relus)
    kernel = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64, device=x.device)

    def accumulate(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        nonlocal kernel
        kernel = kernel + agreement_kernel(binary_codes(inputs[0]))

    # a pre-hook sees the input before an in-place ReLU overwrites it (the sign pattern is the same anyway)
    handles = [relu.register_forward_pre_hook(accumulate) for relu in relus]
    try:
        (forward or model)(x)
    finally:
        for handle in handles:
            handle.remove()
    if not handles:
        raise ValueError(f"{type(model).__name__}: no ReLU to take NASWOT codes from")
    return kernel


# --------------------------------------------------------------------------- NetPerfProxy of a supernet


def proxy_batch(data: SearchData, generator: torch.Generator, npp_batch: int = 64) -> torch.Tensor:
    """The proxy's batch: `npp_batch` distinct D_tr images (`hpe.npp_batch`), augmented as a training
    batch. Distinct images, because two equal ones make every kernel singular."""
    if npp_batch < 2 or npp_batch > len(data.train_idx):
        raise NasflowError(f"hpe.npp_batch must be between 2 and the {len(data.train_idx)} D_tr images, "
                           f"got {npp_batch}")
    pick = torch.randperm(len(data.train_idx), generator=generator)[:npp_batch]
    return data.images.batch(data.train_idx[pick], generator)[0]


def _check(x: torch.Tensor, form: str, code_source: str) -> None:
    if x.shape[0] < 2:
        raise NasflowError(f"NetPerfProxy needs a batch of at least 2 images, got {x.shape[0]}")
    if form not in FORMS:
        raise NasflowError(f"unknown NetPerfProxy form {form!r} (hpe.npp_form); valid: {', '.join(FORMS)}")
    if code_source not in CODE_SOURCES:
        raise NasflowError(f"unknown binary-code source {code_source!r} (hpe.npp_code_source); "
                           f"valid: {', '.join(CODE_SOURCES)}")


def _weights(state: SupernetState, weights: Weights | None, mixing: str) -> dict[str, torch.Tensor]:
    chosen = state.weights(mixing) if weights is None else weights
    return {k: w.detach() for k, w in chosen.items()}


def _edge_kernels(state: SupernetState, x: torch.Tensor, weights: Weights, active: Active, code_source: str,
                  sites: Sequence[OpSite]) -> EdgeKernels:
    return capture_edge_kernels(state.model, x, lambda batch: state.model(batch, weights, active), code_source, sites)


def netperf_proxy(state: SupernetState, x: torch.Tensor, *, weights: Weights | None = None, mixing: str = "raw",
                  form: str = "agreement", code_source: str = "op_output") -> float:
    """NetPerfProxy of the supernet as it stands (alive ops, their mixing weights) on the batch `x`.

    weights: the mixing weights per cell type (default `state.weights(mixing)`, mixing "raw" for
    `hpe.mixing = raw_alpha`, "softmax" for theta); they both drive the forward and weigh the
    per-op kernels. Negative raw alphas are used as they are (the kernel may
    then be indefinite; log|det| is still defined).
    """
    _check(x, form, code_source)
    w = _weights(state, weights, mixing)
    with batch_statistics(state.model):
        kernels = _edge_kernels(state, x, w, state.active(), code_source, op_sites(state.model))
    return log_abs_det(kernels.kernel(w, form))


def netperf_drop(state: SupernetState, x: torch.Tensor, *, weights: Weights | None = None, mixing: str = "raw",
                 form: str = "agreement", code_source: str = "op_output") -> dict[str, torch.Tensor]:
    """I_npp(e, o) = NPP(full) - NPP(without (e, o)) for every alive op of every edge and cell type.

    Returns per cell type a float64 CPU tensor shaped like alpha: NaN where the op is dead (masked,
    not scored), exactly 0 for an alive `none` (removing it changes neither the forward nor the
    kernel, so no forward is spent on it). Cost: one forward of `x` for the full network plus one
    per alive non-`none` op, all under no_grad. A larger drop means a more important op.
    """
    _check(x, form, code_source)
    w = _weights(state, weights, mixing)
    sites = op_sites(state.model)

    def score(variant_weights: Weights, variant_active: Active) -> float:
        kernels = _edge_kernels(state, x, variant_weights, variant_active, code_source, sites)
        return log_abs_det(kernels.kernel(variant_weights, form))

    with batch_statistics(state.model):
        return _drop_per_op(state, w, sites, score, "NetPerfProxy")


# --------------------------------------------------------------------------- the plain NASWOT baseline


def naswot_drop(state: SupernetState, x: torch.Tensor, *, weights: Weights | None = None, mixing: str = "raw",
                code_source: str = "relu_input") -> dict[str, torch.Tensor]:
    """The ablation of paper Table 4: the same drop with plain, unweighted NASWOT in place of NPP.

    The supernet still runs with its mixing weights; only the kernel ignores alpha.
      relu_input (default)  NASWOT exactly as defined for any network (naswot_score): the codes
                            of the inputs of every ReLU the supernet calls, in cells and outside.
      op_output             the NPP op-output codes with every alive op weighted 1 (NPP's agreement
                            form without alpha), which isolates the effect of the weighting.
    Same return convention and cost as netperf_drop.
    """
    _check(x, "agreement", code_source)
    w = _weights(state, weights, mixing)
    sites = op_sites(state.model)

    def score(variant_weights: Weights, variant_active: Active) -> float:
        def forward(batch: torch.Tensor) -> torch.Tensor:
            return state.model(batch, variant_weights, variant_active)

        if code_source == "relu_input":
            return log_abs_det(_naswot_kernel(state.model, x, forward, None))
        ones = {k: torch.ones_like(v) for k, v in variant_weights.items()}   # dead ops never ran: no entry
        return log_abs_det(capture_edge_kernels(state.model, x, forward, "op_output", sites).kernel(ones))

    with batch_statistics(state.model):
        return _drop_per_op(state, w, sites, score, "NASWOT")


# --------------------------------------------------------------------------- shared drop loop


def _drop_per_op(state: SupernetState, weights: dict[str, torch.Tensor], sites: Sequence[OpSite],
                 score: Callable[[Weights, Active], float], name: str) -> dict[str, torch.Tensor]:
    """full - score(variant) per alive op; the variant zeroes that weight and drops it from `active`."""
    active = state.active()
    full = score(weights, active)
    if not math.isfinite(full):
        raise NasflowError(f"the {name} kernel is singular on this batch (log|det| = {full}); "
                           "use a batch without duplicate images")
    zero_ops = {(s.cell_type, s.edge, s.op) for s in sites if is_zero_op(s.module)}
    drop = {k: torch.full(tuple(m.shape), math.nan, dtype=torch.float64) for k, m in state.mask.items()}
    for kind, edges in active.items():
        for e, alive in enumerate(edges):
            for o in alive:
                if (kind, e, o) in zero_ops:
                    drop[kind][e, o] = 0.0
                    continue
                variant_weights = {k: v.clone() for k, v in weights.items()}
                variant_weights[kind][e, o] = 0.0
                variant_active = {k: [list(ops) for ops in v] for k, v in active.items()}
                variant_active[kind][e] = [p for p in alive if p != o]
                drop[kind][e, o] = full - score(variant_weights, variant_active)
    return drop
