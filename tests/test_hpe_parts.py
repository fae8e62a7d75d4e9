"""HPE-DARTS scores: the NASWOT / NetPerfProxy kernels and their invariances (the per-op drops:
test_hpe_drops.py; pruning: test_hpe_pruning.py).

Reference values come from code written here independently of the library: a per-pair Hamming
count over hooked activations in numpy, and a NASWOT accumulation written like the authors' code.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline_steps.scores.binary_codes import EdgeKernels, agreement_kernel, hamming_matrix, log_abs_det
from pipeline_steps.scores.netperf import naswot_score, netperf_drop, netperf_proxy
from pipeline_steps.spaces import darts, get_space, nb201
from pipeline_steps.supernet.state import Optimisation, SupernetState, init_state

pytestmark = pytest.mark.usefixtures("one_thread")

NB201_TINY = {"channels": 4, "cells_per_stage": 1}
DARTS_TINY = {"channels": 4, "layers": 3}
# a few ops per edge keep the DARTS tests quick: cheap skips everywhere, a conv and a pool on two edges
DARTS_FEW_OPS = {kind: [["none", "skip_connect"] + (["sep_conv_3x3", "max_pool_3x3"] if e in (0, 13) else [])
                        for e in range(14)] for kind in darts.CELLS}


# --------------------------------------------------------------------------- helpers


def make_state(space_name: str, seed: int = 0) -> SupernetState:
    space = get_space(space_name, NB201_TINY if space_name == "nb201" else DARTS_TINY)
    return init_state(space, 10, Optimisation(epochs=1, alpha_init="uniform"), seed=seed, device="cpu")


def images(n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def set_alpha(state: SupernetState, seed: int, low: float = 0.2, high: float = 1.5) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in state.alpha.values():
            a.copy_(low + (high - low) * torch.rand(a.shape, generator=gen))


def keep_only(state: SupernetState, per_edge: dict[str, list[list[str]]]) -> None:
    ops = state.space.ops
    for kind, m in state.mask.items():
        m[:] = False
        for e, names in enumerate(per_edge[kind]):
            m[e, [ops.index(n) for n in names]] = True


def op_modules(model: nn.Module) -> list[tuple[str, int, int, int, nn.Module]]:
    """(cell type, cell position, edge, alpha column, module) for every candidate op, walked by hand."""
    found = []
    if isinstance(model, nb201.Supernet):
        cells = [m for m in model.layers if isinstance(m, nb201.SearchCell)]
        for c, cell in enumerate(cells):
            for e, key in enumerate(nb201.EDGE_KEYS):
                found += [("cell", c, e, o, op) for o, op in enumerate(cell.edges[key])]
    else:
        for c, cell in enumerate(model.cells):
            kind = "reduce" if cell.reduction else "normal"
            for e, edge in enumerate(cell.edges):
                found += [(kind, c, e, model.op_names.index(name), op) for name, op in edge.items()]
    return found


def forward_of(state: SupernetState, mixing: str = "raw"):
    weights = {k: w.detach() for k, w in state.weights(mixing).items()}
    active = state.active()
    return lambda x: state.model(x, weights, active)


def brute_force_npp(state: SupernetState, x: torch.Tensor, form: str, mixing: str = "raw") -> float:
    """NetPerfProxy from its definition: hook every alive non-`none` op's output, count differing
    bits pair by pair, weigh by the mixing weight, sum per edge and cell, log|det| in numpy float64."""
    weights = {k: w.detach() for k, w in state.weights(mixing).items()}
    outputs: list[tuple[str, int, int, int, np.ndarray]] = []
    handles = []
    for kind, c, e, o, module in op_modules(state.model):
        if state.space.ops[o] == "none" or not state.mask[kind][e, o]:
            continue
        handles.append(module.register_forward_hook(
            lambda _m, _i, out, key=(kind, c, e, o): outputs.append((*key, out.detach().flatten(1).numpy() > 0))))
    model = state.model
    was_training = model.training
    model.train()
    with torch.no_grad():
        forward_of(state, mixing)(x)
    model.train(was_training)
    for h in handles:
        h.remove()
    n = x.shape[0]
    kernel = np.zeros((n, n))
    edges_with_codes = {}
    for kind, c, e, o, codes in outputs:
        weight = float(weights[kind][e, o])
        length = codes.shape[1]
        edges_with_codes[(kind, c, e)] = length
        for i in range(n):
            for j in range(n):
                differing = int(np.count_nonzero(codes[i] != codes[j]))
                if form == "agreement":
                    kernel[i, j] += weight * (length - differing)
                elif i != j:
                    kernel[i, j] += weight * differing
    if form == "literal":
        kernel += np.eye(n) * sum(edges_with_codes.values())
    return float(np.linalg.slogdet(kernel)[1])


def reference_naswot(model: nn.Module, forward, x: torch.Tensor, relus: list[nn.Module]) -> float:
    """NASWOT accumulated as the authors' code does: a forward hook on each ReLU, its input's sign
    pattern x, K += x x^T + (1 - x)(1 - x)^T, score = slogdet(K)[1]."""
    n = x.shape[0]
    total = {"K": np.zeros((n, n))}

    def hook(_module, inp, _out):
        codes = (inp[0].detach().reshape(n, -1) > 0).double().numpy()
        total["K"] = total["K"] + codes @ codes.T + (1.0 - codes) @ (1.0 - codes).T

    handles = [r.register_forward_hook(hook) for r in relus]
    model.train()
    with torch.no_grad():
        forward(x)
    for h in handles:
        h.remove()
    return float(np.linalg.slogdet(total["K"])[1])


def snapshot(state: SupernetState) -> dict[str, torch.Tensor]:
    return {**{f"buffer:{k}": b.clone() for k, b in state.model.named_buffers()},
            **{f"alpha:{k}": a.detach().clone() for k, a in state.alpha.items()},
            **{f"mask:{k}": m.clone() for k, m in state.mask.items()}}


# --------------------------------------------------------------------------- kernels by hand

CODES_A = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 1], [0, 0, 0, 0]], dtype=torch.float64)
CODES_B = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.float64)


def test_hamming_agreement_and_naswot_on_a_hand_made_example():
    assert hamming_matrix(CODES_A).tolist() == [[0, 2, 3], [2, 0, 3], [3, 3, 0]]
    assert agreement_kernel(CODES_A).tolist() == [[4, 2, 1], [2, 4, 1], [1, 1, 4]]
    # det [[4,2,1],[2,4,1],[1,1,4]] = 4*15 - 2*7 + 1*(-2) = 44
    assert log_abs_det(agreement_kernel(CODES_A)) == pytest.approx(math.log(44), abs=1e-12)
    # a one-ReLU network whose inputs have exactly these sign patterns (0 is inactive, as 1[x > 0] says)
    x = torch.tensor([[2.0, -1.0, 0.5, 3.0], [1.0, 4.0, 0.0, 0.1], [-1.0, -2.0, 0.0, -0.5]])
    for relu in (nn.ReLU(), nn.ReLU(inplace=True)):
        assert naswot_score(relu, x.clone()) == pytest.approx(math.log(44), abs=1e-12)
    # two ReLU layers: the kernels add up; codes_b after a sign-preserving identity layer
    net = nn.Sequential(nn.ReLU(), nn.Identity())
    twice = naswot_score(net, x, forward=lambda t: (net[0](t), net[0](2 * CODES_B.float() - 1)))
    assert twice == pytest.approx(math.log(abs(np.linalg.det([[8, 6, 1], [6, 8, 1], [1, 1, 8]]))), abs=1e-12)


def test_weighted_edge_kernel_on_a_hand_made_example():
    """Two ops of one edge (weights 0.5 and 2), 3 samples, L = 4."""
    kernels = EdgeKernels(batch=3, hamming={("cell", 0, 1): hamming_matrix(CODES_A),
                                            ("cell", 0, 2): hamming_matrix(CODES_B)})
    kernels.length.update({("cell", 0, 1): 4.0, ("cell", 0, 2): 4.0})
    kernels.edge_length.update({("cell", 0): 4.0})
    weights = {"cell": torch.tensor([[0.0, 0.5, 2.0]])}
    # agreement: 0.5 * (4 - H_A) + 2 * (4 - H_B)
    agreement = [[10.0, 9.0, 0.5], [9.0, 10.0, 0.5], [0.5, 0.5, 10.0]]
    assert kernels.kernel(weights, "agreement").tolist() == agreement
    assert log_abs_det(kernels.kernel(weights, "agreement")) == pytest.approx(math.log(189.5), abs=1e-12)
    # literal (paper Eq. 8-9): 0.5 * H_A + 2 * H_B off the diagonal, L on it
    literal = [[4.0, 1.0, 9.5], [1.0, 4.0, 9.5], [9.5, 9.5, 4.0]]
    assert kernels.kernel(weights, "literal").tolist() == literal


def test_naswot_score_matches_the_reference_accumulation_on_a_plain_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = images(8)
    relus = [m for m in net if isinstance(m, nn.ReLU)]
    expected = reference_naswot(net, net, x, relus)
    net.eval()
    buffers = {k: b.clone() for k, b in net.named_buffers()}
    # batch statistics even when handed an eval-mode network, as the reference (never in eval mode)
    assert naswot_score(net, x) == pytest.approx(expected, abs=1e-9)
    assert not net.training and all(torch.equal(b, buffers[k]) for k, b in net.named_buffers())


# --------------------------------------------------------------------------- NetPerfProxy = NASWOT


def one_op_per_edge(state: SupernetState, seed: int) -> None:
    """A random single non-`none` op on every edge, all mixing weights 1: a plain network."""
    gen = torch.Generator().manual_seed(seed)
    ops = state.space.ops
    choices = {}
    for kind, m in state.mask.items():
        choices[kind] = []
        for e in range(m.shape[0]):
            candidates = [ops[o] for o in torch.nonzero(m[e]).flatten().tolist() if ops[o] != "none"]
            choices[kind].append([candidates[int(torch.randint(len(candidates), (1,), generator=gen))]])
    keep_only(state, choices)
    with torch.no_grad():
        for a in state.alpha.values():
            a.fill_(1.0)


@pytest.mark.parametrize("space_name", ["nb201", "darts"])
def test_npp_with_one_op_per_edge_and_unit_alpha_is_naswot(space_name):
    state = make_state(space_name)
    one_op_per_edge(state, seed=3)
    x = images(8)
    # op-output codes (hpe.npp_code_source = op_output): NASWOT's kernel over the op outputs
    assert netperf_proxy(state, x) == pytest.approx(brute_force_npp(state, x, "agreement"), abs=1e-9)
    # relu-input codes: exactly NASWOT (the reference's accumulation) over the ReLUs of the cells' ops
    cell_relus = [r for kind, _c, e, o, op in op_modules(state.model) if state.mask[kind][e, o]
                  for r in op.modules() if isinstance(r, nn.ReLU)]
    assert cell_relus
    npp = netperf_proxy(state, x, code_source="relu_input")
    assert npp == pytest.approx(reference_naswot(state.model, forward_of(state), x, cell_relus), abs=1e-9)
    assert npp == pytest.approx(naswot_score(state.model, x, forward_of(state), cell_relus), abs=1e-9)


@pytest.mark.parametrize("form,mixing", [("agreement", "raw"), ("literal", "raw"), ("agreement", "softmax")])
def test_npp_on_mixed_edges_matches_the_definition(form, mixing):
    """All ops alive with different alphas, one op masked: the weighting (raw alpha or theta), the
    mask and the literal diagonal are all checked against the per-pair count."""
    state = make_state("nb201")
    set_alpha(state, seed=4)
    state.mask["cell"][2, nb201.OPS.index("nor_conv_3x3")] = False
    x = images(8)
    assert netperf_proxy(state, x, form=form, mixing=mixing) == pytest.approx(
        brute_force_npp(state, x, form, mixing), abs=1e-9)


# --------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("space_name", ["nb201", "darts"])
def test_npp_does_not_depend_on_the_order_of_the_batch(space_name):
    state = make_state(space_name)
    set_alpha(state, seed=5)
    if space_name == "darts":
        keep_only(state, DARTS_FEW_OPS)
    x = images(8)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(6))
    for form in ("agreement", "literal"):
        assert netperf_proxy(state, x[perm], form=form) == pytest.approx(netperf_proxy(state, x, form=form), abs=1e-9)
    assert naswot_score(state.model, x[perm], forward_of(state)) == pytest.approx(
        naswot_score(state.model, x, forward_of(state)), abs=1e-9)


def test_npp_drop_does_not_depend_on_the_order_of_the_batch():
    state = make_state("nb201")
    set_alpha(state, seed=7)
    keep_only(state, {"cell": [["none", "skip_connect", "nor_conv_3x3"], ["nor_conv_1x1", "avg_pool_3x3"]] * 3})
    x = images(8)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(netperf_drop(state, x[perm]), netperf_drop(state, x), equal_nan=True, rtol=0, atol=1e-9)


@pytest.mark.parametrize("space_name", ["nb201", "darts"])
def test_masked_ops_contribute_nothing(space_name):
    state = make_state(space_name)
    set_alpha(state, seed=9)
    kind = state.space.cell_types[0]
    conv = state.space.op_index("nor_conv_3x3" if space_name == "nb201" else "sep_conv_3x3")
    state.mask[kind][1, conv] = False
    x = images(8)
    before = netperf_proxy(state, x)
    masked_module = next(op for k, _c, e, o, op in op_modules(state.model) if (k, e, o) == (kind, 1, conv))
    alive_module = next(op for k, _c, e, o, op in op_modules(state.model) if (k, e, o) == (kind, 0, conv))
    with torch.no_grad():
        for p in masked_module.parameters():
            p.normal_(generator=torch.Generator().manual_seed(10))
        state.alpha[kind][1, conv] = 50.0
    assert netperf_proxy(state, x) == before
    # the same change on an alive op does move the score (the check above can fail)
    with torch.no_grad():
        for p in alive_module.parameters():
            p.normal_(generator=torch.Generator().manual_seed(10))
    assert netperf_proxy(state, x) != pytest.approx(before, abs=1e-6)
