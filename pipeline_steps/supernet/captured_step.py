"""The bilevel and fixed-alpha steps as one static-shaped function that a CUDA graph can record.

A paper-scale NB201 step (C=16, batch 64) is thousands of small kernels, and launching them one by
one from Python costs more than running them (233.6 ms a step on an H200, 58.7 ms replayed as a
graph; what is left is the kernels themselves, batch norm and convolution backward first).
`CapturedStep` does the same step as `train.bilevel` / `train.fixed_alpha` (alpha step on a D_val
batch, then a clipped SGD weight step on a D_tr batch) with everything a graph must hold fixed:

* the inputs live in static buffers the batches are copied into;
* gradients come from `torch.autograd.grad`, never from `.grad`, so no tensor is reallocated;
* SGD and Adam are written out with foreach ops that read and update the torch optimisers' own
  state in place (momentum buffers, Adam moments), with the learning rate in a device tensor, so
  checkpoints and the plain path see the same optimiser state;
* loss/accuracy sums and the OStr statistics accumulate in place.

On CUDA the step runs eagerly for `warmup` steps (cuDNN/cuBLAS set-up), is then recorded once and
replayed for the rest of the epoch; a batch of another shape (the last, partial one) runs eagerly,
as every step does on CPU (where its equality with the plain step is tested).

With `compile_network` the supernet's forward and backward run as `torch.compile`d code (fused
elementwise kernels inside the same graph), compiled for the alpha and the weight step before the
first step; where compiling fails the network runs as it is.
"""
from __future__ import annotations

import sys
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from .state import SupernetState, mixing_weights

CAPTURABLE_MODES = ("bilevel", "fixed_alpha")
COMPILE_BACKEND = "inductor"


@runtime_checkable
class InPlaceStatistics(Protocol):
    """The one kind of hook a captured step runs (OStr's): per-cell-type sums it adds to in place."""

    batches: int  # the alpha batches the sums cover

    def sums_for(self, kind: str, like: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def add(self, kind: str, theta: torch.Tensor, alive: torch.Tensor, grad_alpha: torch.Tensor | None,
            grad_theta: torch.Tensor | None) -> None: ...


def supported(state: SupernetState, mode: str, hooks) -> str | None:
    """Why this step cannot be captured (None: it can)."""
    if mode not in CAPTURABLE_MODES:
        return f"mode {mode} has its own step"
    if len(hooks) > 1 or any(not isinstance(h, InPlaceStatistics) for h in hooks):
        return "hooks other than one in-place statistics hook (OStr's)"
    w, a = state.w_optimizer, state.a_optimizer
    if type(w) is not torch.optim.SGD or any(g.get("dampening", 0) or g.get("maximize") for g in w.param_groups):
        return "a weight optimiser other than plain SGD"
    if type(a) is not torch.optim.Adam or any(g.get("amsgrad") or g.get("maximize") for g in a.param_groups):
        return "an alpha optimiser other than plain Adam"
    return None


class CapturedStep:
    """One epoch's steps of `mode` on `state`; build a new one when the mask, the mode or the
    optimisers change (every epoch does)."""

    def __init__(self, state: SupernetState, mode: str, mixing: str, grad_clip: float,
                 ostr: InPlaceStatistics | None, use_graph: bool, warmup: int = 3, compile_network: bool = False):
        self.state, self.mode, self.mixing, self.grad_clip, self.ostr = state, mode, mixing, grad_clip, ostr
        self.device = state.device
        self.use_graph = use_graph and self.device.type == "cuda"
        self.warmup = warmup
        self.kinds = list(state.alpha)
        self.active = state.active()
        self.masks = {k: state.device_mask(k, self.device) for k in self.kinds}
        self.params = [p for g in state.w_optimizer.param_groups for p in g["params"] if p.requires_grad]
        zeros = lambda: torch.zeros((), device=self.device, dtype=torch.float64)  # noqa: E731
        self.train_loss, self.train_correct, self.val_loss, self.val_correct = zeros(), zeros(), zeros(), zeros()
        self.train_count = self.val_count = 0
        self._init_optimiser_state()
        if ostr is not None:
            for k in self.kinds:
                ostr.sums_for(k, state.alpha[k].detach())
        self.static: dict[str, torch.Tensor] = {}
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0
        self.network = state.model
        self.compile_network = compile_network

    # ----------------------------------------------------------------- optimiser state
    def _init_optimiser_state(self) -> None:
        w, a = self.state.w_optimizer, self.state.a_optimizer
        self.groups = []
        for g in w.param_groups:
            ps = [p for p in g["params"] if p.requires_grad]
            for p in ps:
                if w.state[p].get("momentum_buffer") is None:
                    # buf = 0 * m + d_p equals torch's first step buf = d_p exactly
                    w.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            self.groups.append({"params": ps, "bufs": [w.state[p]["momentum_buffer"] for p in ps],
                                "lr": torch.full((), -float(g["lr"]), device=self.device, dtype=ps[0].dtype if ps else None),
                                "momentum": g["momentum"], "weight_decay": g["weight_decay"],
                                "nesterov": g.get("nesterov", False)})
        self.adam = []
        for g in a.param_groups:
            for p in g["params"]:
                st = a.state[p]
                if not st:
                    st.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                self.adam.append({"param": p, "state": st, "lr": g["lr"], "betas": g["betas"], "eps": g["eps"],
                                  "weight_decay": g["weight_decay"],
                                  # float64, as torch's own bias corrections are Python floats
                                  "step": torch.full((), float(st["step"]), device=self.device, dtype=torch.float64)})

    def sync_optimiser_state(self) -> None:
        """Write the device-side Adam step counts back into the optimiser (before a checkpoint)."""
        for entry in self.adam:
            step = float(entry["step"])
            if isinstance(entry["state"]["step"], torch.Tensor):
                entry["state"]["step"].fill_(step)
            else:
                entry["state"]["step"] = step

    # ----------------------------------------------------------------- the step
    def _weights(self) -> dict[str, torch.Tensor]:
        return {k: mixing_weights(self.state.alpha[k], self.masks[k], self.mixing) for k in self.kinds}

    def _alpha_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        alphas = [self.state.alpha[k] for k in self.kinds]
        weights = self._weights()
        logits = self.network(x, weights, self.active)
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, alphas + [weights[k] for k in self.kinds], allow_unused=True)
        grad_alpha, grad_theta = grads[:len(alphas)], grads[len(alphas):]
        if self.ostr is not None:
            for k, ga, gt in zip(self.kinds, grad_alpha, grad_theta):
                self.ostr.add(k, weights[k], self.masks[k], ga, gt)
        self.val_loss.add_(loss.detach() * len(y))
        self.val_correct.add_((logits.detach().argmax(1) == y).sum())
        with torch.no_grad():
            for entry, g in zip(self.adam, grad_alpha):
                if g is not None:
                    _adam(entry, g)

    def _weight_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.no_grad():
            weights = self._weights()
        logits = self.network(x, weights, self.active)
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        self.train_loss.add_(loss.detach() * len(y))
        self.train_correct.add_((logits.detach().argmax(1) == y).sum())
        with torch.no_grad():
            by_param = {id(p): g for p, g in zip(self.params, grads) if g is not None}
            used = list(by_param.values())
            # clip_grad_norm_: the norm over every gradient, scaled down only when above the limit
            total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(used)))
            scale = (self.grad_clip / (total + 1e-6)).clamp(max=1.0)
            torch._foreach_mul_(used, scale)
            for group in self.groups:
                idx = [i for i, p in enumerate(group["params"]) if id(p) in by_param]
                if idx:
                    _sgd(group, [group["params"][i] for i in idx], [by_param[id(group["params"][i])] for i in idx],
                         [group["bufs"][i] for i in idx])

    def _body(self) -> None:
        s = self.static
        if self.mode == "bilevel":
            self._alpha_step(s["x_val"], s["y_val"])
        self._weight_step(s["x_tr"], s["y_tr"])

    def __call__(self, val_batch, train_batch) -> None:
        """One step on these batches (val_batch is None in fixed_alpha mode)."""
        batches = {"x_tr": train_batch[0], "y_tr": train_batch[1]}
        if val_batch is not None:
            batches.update(x_val=val_batch[0], y_val=val_batch[1])
        self.train_count += len(train_batch[1])
        self.val_count += len(val_batch[1]) if val_batch is not None else 0
        if self.ostr is not None and val_batch is not None:
            self.ostr.batches += 1
        same_shape = self.static and all(self.static[k].shape == v.shape for k, v in batches.items())
        if not same_shape and self.static:  # e.g. the last, partial batch: run it as it is
            saved, self.static = self.static, batches
            self._body()
            self.static = saved
            return
        if not self.static:
            self.static = {k: v.clone() for k, v in batches.items()}
            if self.compile_network:
                self.network = self._compiled_network(self.static["x_tr"])
        else:
            for k, v in batches.items():
                self.static[k].copy_(v, non_blocking=True)
        self.calls += 1
        if not self.use_graph or self.calls <= self.warmup:
            self._body()
            return
        if self.graph is None and not self._capture():
            self._body()
            return
        self.graph.replay()

    def _capture(self) -> bool:
        """Record the step; on failure say why once and run eagerly from here on (same numbers)."""
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._body()
        except Exception as e:  # an op that cannot be captured on this torch/driver
            print(f"captured step: recording a CUDA graph failed ({type(e).__name__}: {str(e).splitlines()[0]}); "
                  "running the same step eagerly", file=sys.stderr, flush=True)
            self.use_graph, self.graph = False, None
            torch.cuda.synchronize(self.device)
            return False
        # recording runs nothing: the step of this call happens in its first replay (the caller's)
        self.graph = graph
        return True

    def _compiled_network(self, x: torch.Tensor):
        """The supernet compiled for both steps (weights with and without gradient) on a batch of
        the epoch's shape; BN running statistics are put back, so the steps see the model as it was."""
        model = self.state.model
        buffers = [b.clone() for b in model.buffers()]
        try:
            network = torch.compile(model, backend=COMPILE_BACKEND, dynamic=False)
            for alpha_step in (True, False):
                with torch.set_grad_enabled(alpha_step):
                    weights = self._weights()
                logits = network(x, weights, self.active)
                wrt = [weights[k] for k in self.kinds] if alpha_step else self.params
                torch.autograd.grad(F.cross_entropy(logits, logits.argmax(1)), wrt, allow_unused=True)
        except Exception as e:  # no compiler, or an op the compiler cannot take on this torch
            while getattr(e, "inner_exception", None) or e.__cause__:  # the compiler's own error, not dynamo's wrapper
                e = getattr(e, "inner_exception", None) or e.__cause__
            print(f"captured step: compiling the network failed ({type(e).__name__}: {(str(e) or '-').splitlines()[0]}); "
                  "running it uncompiled", file=sys.stderr, flush=True)
            network = model
        finally:
            with torch.no_grad():
                for b, saved in zip(model.buffers(), buffers):
                    b.copy_(saved)
        return network

    @property
    def path(self) -> str:
        return ("graph" if self.use_graph else "eager") + ("+compiled" if self.network is not self.state.model else "")

    def finish(self, train_stats, val_stats) -> None:
        """Hand the epoch's sums to the loop's StepStats and the optimiser its step counts."""
        self.sync_optimiser_state()
        train_stats.loss_sum, train_stats.correct, train_stats.count = self.train_loss, self.train_correct, self.train_count
        if self.val_count:
            val_stats.loss_sum, val_stats.correct, val_stats.count = self.val_loss, self.val_correct, self.val_count
        self.graph = None


def _sgd(group: dict, params: list, grads: list, bufs: list) -> None:
    """torch.optim.SGD (no dampening): d = g + wd p; buf = m buf + d; p -= lr (nesterov ? d + m buf : buf)."""
    d = torch._foreach_add(grads, params, alpha=group["weight_decay"]) if group["weight_decay"] else list(grads)
    torch._foreach_mul_(bufs, group["momentum"])
    torch._foreach_add_(bufs, d)
    update = torch._foreach_add(d, bufs, alpha=group["momentum"]) if group["nesterov"] else bufs
    torch._foreach_add_(params, torch._foreach_mul(update, group["lr"]))


def _adam(entry: dict, g: torch.Tensor) -> None:
    """torch.optim.Adam (L2 weight decay, no amsgrad), its step count on the device."""
    p, st = entry["param"], entry["state"]
    b1, b2 = entry["betas"]
    if entry["weight_decay"]:
        g = g.add(p, alpha=entry["weight_decay"])
    entry["step"].add_(1)
    st["exp_avg"].lerp_(g, 1 - b1)
    st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
    bias1 = 1 - torch.pow(b1, entry["step"])
    bias2_sqrt = (1 - torch.pow(b2, entry["step"])).sqrt()
    denom = (st["exp_avg_sq"].sqrt() / bias2_sqrt).add_(entry["eps"])
    p.addcdiv_(st["exp_avg"], denom * (bias1 / -entry["lr"]))
