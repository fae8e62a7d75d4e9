"""NASWOT and the NetPerfProxy on a cell with a dead-end node, against the BayesWatch procedure.

The reference (BayesWatch/nas-without-training, score_networks.py, score `hook_logdet`) hooks
every ReLU: a backward hook sets `visited_backwards`, a forward hook adds x x^T + (1-x)(1-x)^T
for x = 1[ReLU input > 0] if the flag is set. It runs forward, `y.backward(ones_like(y))` on the
logits, then a second forward that accumulates, and scores slogdet(K)[1].

Its NB201 network (xautodl InferCell) evaluates `none` as `x.mul(0.)`, so an edge whose op is
`none` stays in the autograd graph: the backward reaches node 1 of a cell even when every edge
leaving node 1 is `none`, and the ReLUs feeding node 1 count. The supernet cells skip `none`
instead, so the same backward filter applied to the supernet's own graph would drop those ReLUs.
The reference below is written here from the procedure above; it runs on the supernet's modules
with an InferCell-style forward (the ops of each edge summed, `none` as `x.mul(0.)`), which
computes the same activations as the supernet.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline_steps.scores.netperf import naswot_drop, naswot_score, netperf_drop, netperf_proxy
from pipeline_steps.spaces import get_space, nb201
from pipeline_steps.supernet.state import Optimisation, SupernetState, init_state

pytestmark = pytest.mark.usefixtures("one_thread")

# node 1 is a dead end: both edges leaving it (2<-1, 3<-1) are `none`
DEAD_END = ("nor_conv_3x3", "nor_conv_1x1", "none", "skip_connect", "none", "nor_conv_3x3")
DEAD_EDGE = nb201.EDGE_KEYS.index("1<-0")
BATCH, SIZE = 16, 8


# --------------------------------------------------------------------------- setup


def make_state(per_edge: list[list[str]], alpha_seed: int | None = None) -> SupernetState:
    """Tiny NB201 supernet (C=4, one cell per stage) with only `per_edge` alive; alpha 1, or
    uniform in [0.2, 1.5] with `alpha_seed`."""
    space = get_space("nb201", {"channels": 4, "cells_per_stage": 1})
    state = init_state(space, 10, Optimisation(epochs=1, alpha_init="uniform"), seed=0, device="cpu")
    state.mask["cell"][:] = False
    for e, names in enumerate(per_edge):
        for name in names:
            state.mask["cell"][e, nb201.OPS.index(name)] = True
    with torch.no_grad():
        if alpha_seed is None:
            state.alpha["cell"].fill_(1.0)
        else:
            gen = torch.Generator().manual_seed(alpha_seed)
            state.alpha["cell"].copy_(0.2 + 1.3 * torch.rand(state.alpha["cell"].shape, generator=gen))
    return state


def images() -> torch.Tensor:
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def raw_weights(state: SupernetState) -> dict[str, torch.Tensor]:
    return {k: w.detach().clone() for k, w in state.weights("raw").items()}


def supernet_forward(state: SupernetState, weights=None, active=None):
    """The supernet's own forward: `none` is skipped by the cells."""
    weights = raw_weights(state) if weights is None else weights
    active = state.active() if active is None else active
    return lambda x: state.model(x, weights, active)


def reference_forward(state: SupernetState, weights=None, active=None):
    """InferCell-style forward on the supernet's modules: node_i = sum_j sum_o w[e,o] * op(node_j),
    with `none` evaluated as node_j.mul(0.) as the reference network does."""
    weights = raw_weights(state)["cell"] if weights is None else weights["cell"]
    active = state.active()["cell"] if active is None else active["cell"]
    model = state.model

    def cell(layer: nb201.SearchCell, h: torch.Tensor) -> torch.Tensor:
        nodes = [h]
        for i in range(1, nb201.NUM_NODES):
            terms = []
            for j in range(i):
                e = nb201.EDGES.index((i, j))
                for o in active[e]:
                    op_out = nodes[j].mul(0.) if nb201.OPS[o] == "none" else layer.edges[nb201.EDGE_KEYS[e]][o](nodes[j])
                    terms.append(weights[e, o] * op_out)
            nodes.append(sum(terms))
        return nodes[-1]

    def forward(x: torch.Tensor) -> torch.Tensor:
        h = model.stem(x)
        for layer in model.layers:
            h = cell(layer, h) if isinstance(layer, nb201.SearchCell) else layer(h)
        return model.classifier(model.head(h))

    return forward


def backward_visited(model: nn.Module, forward, x: torch.Tensor, modules: list[nn.Module]) -> set[int]:
    """ids of `modules` whose output the backward pass of the logits reaches: the reference's
    `x.requires_grad_(True); y = net(x); y.backward(torch.ones_like(y))` with a backward hook on
    each module (a hook on its output's grad_fn, which is what `register_backward_hook` installs)."""
    visited: set[int] = set()

    def mark(module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
        # an alias of its own, so that an op returning its input (skip_connect) is told apart from it
        output = output.view_as(output)
        output.grad_fn.register_hook(lambda *_args, key=id(module): visited.add(key))
        return output

    handles = [m.register_forward_hook(mark) for m in modules]
    model.train()
    model.zero_grad()
    x1 = x.clone().requires_grad_(True)
    y = forward(x1)
    y.backward(torch.ones_like(y))
    for h in handles:
        h.remove()
    model.zero_grad(set_to_none=True)
    return visited


def reference_naswot(state: SupernetState, forward, x: torch.Tensor) -> tuple[float, set[int], set[int]]:
    """The hook_logdet procedure on every nn.ReLU of the model: (score, visited ReLUs, called ReLUs)."""
    model = state.model
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    visited = backward_visited(model, forward, x, relus)
    n = x.shape[0]
    total = {"K": np.zeros((n, n))}
    called: set[int] = set()

    def counting_forward_hook(module, inp, _out):
        called.add(id(module))
        if id(module) not in visited:
            return
        codes = (inp[0].detach().reshape(n, -1) > 0).double().numpy()
        total["K"] = total["K"] + codes @ codes.T + (1.0 - codes) @ (1.0 - codes).T

    handles = [r.register_forward_hook(counting_forward_hook) for r in relus]
    with torch.no_grad():
        forward(x.clone())
    for h in handles:
        h.remove()
    return float(np.linalg.slogdet(total["K"])[1]), visited, called


def reference_npp(state: SupernetState, forward, x: torch.Tensor, weights, active, unit: bool = False
                  ) -> tuple[float, set[int], set[int]]:
    """NetPerfProxy (agreement form) over the op outputs the backward pass reaches: per alive
    non-`none` op o on edge e, w[e,o] * (L - Hamming) of 1[o(x) > 0], summed; slogdet in float64.
    (score, reached op modules, op modules with codes)."""
    model = state.model
    sites = [(e, o, layer.edges[key][o]) for layer in model.layers if isinstance(layer, nb201.SearchCell)
             for e, key in enumerate(nb201.EDGE_KEYS) for o in active["cell"][e] if nb201.OPS[o] != "none"]
    visited = backward_visited(model, forward, x, [m for _e, _o, m in sites])
    n = x.shape[0]
    kernel = np.zeros((n, n))
    seen: set[int] = set()
    outputs: list[tuple[int, int, nn.Module, np.ndarray]] = []
    handles = [m.register_forward_hook(lambda mod, _i, out, e=e, o=o: outputs.append(
        (e, o, mod, (out.detach().reshape(n, -1) > 0).double().numpy()))) for e, o, m in sites]
    with torch.no_grad():
        forward(x.clone())
    for h in handles:
        h.remove()
    for e, o, module, codes in outputs:
        seen.add(id(module))
        if id(module) not in visited:
            continue
        w = 1.0 if unit else float(weights["cell"][e, o])
        kernel += w * (codes @ codes.T + (1.0 - codes) @ (1.0 - codes).T)
    return float(np.linalg.slogdet(kernel)[1]), visited, seen


def without(state: SupernetState, weights, e: int, o: int):
    """Weights and active ops with (e, o) removed (weight 0, not run), nothing renormalised."""
    variant_weights = {k: v.clone() for k, v in weights.items()}
    variant_weights["cell"][e, o] = 0.0
    active = state.active()
    active["cell"][e] = [p for p in active["cell"][e] if p != o]
    return variant_weights, active


def dead_end_relus(state: SupernetState) -> set[int]:
    """The ReLUs inside the alive ops of edge 1<-0 (they only feed node 1)."""
    return {id(r) for layer in state.model.layers if isinstance(layer, nb201.SearchCell)
            for o in state.active()["cell"][DEAD_EDGE]
            for r in layer.edges["1<-0"][o].modules() if isinstance(r, nn.ReLU)}


# --------------------------------------------------------------------------- NASWOT


def test_reference_forward_is_the_supernet_forward():
    state = make_state([[op] for op in DEAD_END])
    x = images()
    state.model.train()
    with torch.no_grad():
        torch.testing.assert_close(reference_forward(state)(x), supernet_forward(state)(x), rtol=0, atol=0)


def test_naswot_of_a_dead_end_cell_equals_the_reference():
    state = make_state([[op] for op in DEAD_END])
    x = images()
    ours = naswot_score(state.model, x, supernet_forward(state))
    expected, visited, called = reference_naswot(state, reference_forward(state), x)
    dead = dead_end_relus(state)
    assert dead and dead <= called
    # the reference's backward reaches every ReLU, those feeding the dead-end node included
    assert visited >= called
    assert ours == pytest.approx(expected, abs=1e-9)
    # the same filter on the supernet's graph (`none` skipped) drops the dead-end ReLUs and moves
    # the score: an implementation doing that would fail the equality above
    filtered, visited_skipped, _ = reference_naswot(state, supernet_forward(state), x)
    assert not dead & visited_skipped and visited_skipped == called - dead
    assert abs(filtered - expected) > 1.0


def test_naswot_leaves_buffers_grads_and_mode_as_they_were():
    state = make_state([[op] for op in DEAD_END])
    model = state.model
    model.eval()
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    naswot_score(model, images(), supernet_forward(state))
    assert not model.training
    assert all(torch.equal(b, buffers[k]) for k, b in model.named_buffers())
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- NPP and the drops

# several ops feed the dead-end node 1; only `none` leaves it; the other edges mix a few ops
MIXED = [["skip_connect", "nor_conv_3x3", "avg_pool_3x3"], ["nor_conv_1x1", "skip_connect"], ["none"],
         ["skip_connect", "nor_conv_3x3"], ["none"], ["nor_conv_3x3", "avg_pool_3x3"]]


def test_npp_counts_the_ops_of_a_dead_end_edge_as_the_reference_backward_reaches_them():
    state = make_state(MIXED, alpha_seed=3)
    x = images()
    weights, active = raw_weights(state), state.active()
    expected, visited, seen = reference_npp(state, reference_forward(state), x, weights, active)
    dead_ops = {id(layer.edges["1<-0"][o]) for layer in state.model.layers
                if isinstance(layer, nb201.SearchCell) for o in active["cell"][DEAD_EDGE]}
    assert dead_ops <= seen and visited >= seen
    assert netperf_proxy(state, x) == pytest.approx(expected, abs=1e-9)
    filtered, visited_skipped, _ = reference_npp(state, supernet_forward(state), x, weights, active)
    assert not dead_ops & visited_skipped
    assert abs(filtered - expected) > 1e-3


@pytest.mark.parametrize("name", ["nor_conv_3x3", "avg_pool_3x3", "skip_connect"])
def test_drops_of_a_dead_end_op_follow_the_reference(name):
    state = make_state(MIXED, alpha_seed=3)
    x = images()
    weights = raw_weights(state)
    o = nb201.OPS.index(name)
    removed_weights, removed_active = without(state, weights, DEAD_EDGE, o)
    full_active = state.active()

    def npp(w, a, unit=False):
        return reference_npp(state, reference_forward(state, w, a), x, w, a, unit)[0]

    def naswot(w, a):
        return reference_naswot(state, reference_forward(state, w, a), x)[0]

    npp_drop = npp(weights, full_active) - npp(removed_weights, removed_active)
    plain_drop = npp(weights, full_active, True) - npp(removed_weights, removed_active, True)
    naswot_relu_drop = naswot(weights, full_active) - naswot(removed_weights, removed_active)
    assert abs(npp_drop) > 1e-6 and abs(plain_drop) > 1e-6
    assert netperf_drop(state, x)["cell"][DEAD_EDGE, o] == pytest.approx(npp_drop, abs=1e-9)
    assert naswot_drop(state, x, code_source="op_output")["cell"][DEAD_EDGE, o] == pytest.approx(plain_drop, abs=1e-9)
    # the hpe_darts_naswot ablation (relu_input): node 1 feeds no ReLU, so only an op with ReLUs of
    # its own moves plain NASWOT when removed
    assert naswot_drop(state, x)["cell"][DEAD_EDGE, o] == pytest.approx(naswot_relu_drop, abs=1e-9)
    assert (abs(naswot_relu_drop) > 1e-6) == (name == "nor_conv_3x3")
