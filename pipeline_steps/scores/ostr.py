"""Operation strength (OStr-DARTS, METHODS.md 6.2), read off the gradients the alpha step computes.

With theta = softmax(alpha) shared by every cell of a type and g[e,o] = dL/dtheta[e,o]:

  dL/dalpha[e,o] = theta[e,o] * (g[e,o] - sum_k theta[e,k] g[e,k])

so, per validation batch b of an epoch (M batches), the criteria are

  ostr      = 1/M sum_b |dL_b/dalpha|                     (OStr-DARTS: includes theta's magnitude)
  ostr_star = 1/M sum_b |dL_b/dalpha| / theta^(b)         (OStr-DARTS*: the residual-feature term,
                                                             the first-order loss change when the
                                                             mixed edge output is replaced by op o)
  gw        = 1/M sum_b |dL_b/dtheta|                     (naive pruning, the code's |gW|)
  theta_gw  = 1/M sum_b theta^(b) |dL_b/dtheta|           (naive pruning, SNIP-style removal effect)

No extra forward or backward pass: `OStrStatistics` is a training hook called after each alpha
backward. Dead ops (theta = 0) score 0.
"""
from __future__ import annotations

import torch

CRITERIA = ("ostr", "ostr_star", "gw", "theta_gw")


def per_batch(theta: torch.Tensor, alive: torch.Tensor, grad_alpha: torch.Tensor,
              grad_theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four criteria of one validation batch (absolute gradients in, E x n_ops each out)."""
    return {
        "ostr": grad_alpha * alive,
        "ostr_star": torch.where(alive, grad_alpha / theta.clamp_min(1e-30), torch.zeros_like(theta)),
        "gw": grad_theta * alive,
        "theta_gw": theta * grad_theta,
    }


class OStrStatistics:
    """Per-epoch sums of the four criteria per cell type; `finish_epoch` returns the means and resets.
    The sums are updated in place, so a captured (CUDA graph) step can accumulate into them."""

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, torch.Tensor]] = {}
        self.batches = 0

    def sums_for(self, kind: str, like: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.sums.setdefault(kind, {c: torch.zeros_like(like) for c in CRITERIA})

    def add(self, kind: str, theta: torch.Tensor, alive: torch.Tensor, grad_alpha: torch.Tensor | None,
            grad_theta: torch.Tensor | None) -> None:
        theta = theta.detach()
        grad_alpha = grad_alpha.detach().abs() if grad_alpha is not None else torch.zeros_like(theta)
        grad_theta = grad_theta.detach().abs() if grad_theta is not None else torch.zeros_like(theta)
        sums = self.sums_for(kind, theta)
        for c, value in per_batch(theta, alive, grad_alpha, grad_theta).items():
            sums[c].add_(value)

    def after_alpha_backward(self, state, weights: dict[str, torch.Tensor]) -> None:
        for kind, alpha in state.alpha.items():
            self.add(kind, weights[kind], state.device_mask(kind, alpha.device), alpha.grad, weights[kind].grad)
        self.batches += 1

    def finish_epoch(self) -> dict[str, dict[str, list[list[float]]]]:
        """{criterion: {cell type: E x n_ops means}}; empty when no alpha step ran (fixed-alpha modes)."""
        if not self.batches:
            return {}
        out = {c: {kind: (s[c] / self.batches).cpu().tolist() for kind, s in self.sums.items()} for c in CRITERIA}
        self.sums, self.batches = {}, 0
        return out
