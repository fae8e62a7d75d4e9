"""The NB201 supernet: mixed edges honour the mask, alpha gradients are right, derive is argmax."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline_steps.spaces import get_space
from pipeline_steps.spaces.nb201 import EDGE_KEYS, OPS, SearchCell, str_to_ops
from pipeline_steps.supernet.state import Optimisation, init_state, mixing_weights

SETTINGS = {"op_order": list(OPS), "bn_affine": False, "pool_bn": False, "channels": 2, "cells_per_stage": 1}


def test_masked_op_contributes_zero_and_is_never_called():
    torch.manual_seed(0)
    cell = SearchCell(3, OPS, bn_affine=False, pool_bn=False).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.double)
    w = torch.rand(6, 5, dtype=torch.double)
    conv3 = OPS.index("nor_conv_3x3")
    calls = []
    for key in EDGE_KEYS:
        cell.edges[key][conv3].register_forward_hook(lambda *a: calls.append(1))
    all_ops = [list(range(5))] * 6
    without = [[o for o in range(5) if o != conv3]] * 6
    w_zeroed = w.clone()
    w_zeroed[:, conv3] = 0
    expected = cell(x, w_zeroed, all_ops)
    calls.clear()
    got = cell(x, w, without)
    assert calls == []  # masked op costs no compute
    torch.testing.assert_close(got, expected)
    # and the op did matter when alive
    assert not torch.allclose(cell(x, w, all_ops), got)


def test_masked_softmax_is_zero_on_dead_ops_and_sums_to_one():
    alpha = torch.randn(6, 5)
    mask = torch.rand(6, 5) > 0.4
    mask[:, 0] = True
    w = mixing_weights(alpha, mask, "softmax")
    assert torch.all(w[~mask] == 0)
    torch.testing.assert_close(w.sum(1), torch.ones(6))
    torch.testing.assert_close(mixing_weights(alpha, mask, "raw"), alpha * mask)


def test_alpha_gradient_matches_finite_differences():
    space = get_space("nb201", SETTINGS)
    state = init_state(space, 3, Optimisation(epochs=1), seed=0, device="cpu")
    model = state.model.double().eval()
    for m in model.modules():  # batch statistics make the loss depend on the batch only: fine, still smooth
        if isinstance(m, torch.nn.BatchNorm2d):
            m.train()
    x = torch.randn(4, 3, 6, 6, dtype=torch.double, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1])
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[2, 3] = False  # a dead op: zero gradient, no effect
    active = {"cell": [torch.nonzero(r).flatten().tolist() for r in mask]}
    alpha = (0.5 * torch.randn(6, 5, dtype=torch.double, generator=torch.Generator().manual_seed(2))).requires_grad_()

    def loss_of(a):
        return F.cross_entropy(model(x, {"cell": mixing_weights(a, mask, "softmax")}, active), y)

    loss_of(alpha).backward()
    eps = 1e-6
    fd = torch.zeros_like(alpha)
    with torch.no_grad():
        for e in range(6):
            for o in range(5):
                a = alpha.detach().clone()
                a[e, o] += eps
                up = loss_of(a)
                a[e, o] -= 2 * eps
                fd[e, o] = (up - loss_of(a)) / (2 * eps)
    torch.testing.assert_close(alpha.grad, fd, rtol=1e-4, atol=1e-7)
    assert alpha.grad[2, 3] == 0
    assert alpha.grad.abs().sum() > 1e-4


def test_magnitude_derive_honours_mask_and_none_rule():
    space = get_space("nb201", SETTINGS)
    alpha = torch.zeros(6, 5)
    alpha[:, OPS.index("none")] = 3.0
    alpha[:, OPS.index("nor_conv_3x3")] = 2.0
    alpha[0, OPS.index("avg_pool_3x3")] = 5.0
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[0, OPS.index("avg_pool_3x3")] = False  # the strongest op on edge 0 is dead
    w = {"cell": mixing_weights(alpha, mask, "softmax")}
    m = {"cell": mask}
    assert str_to_ops(space.derive(w, m, True)) == ("none",) * 6
    assert str_to_ops(space.derive(w, m, False)) == ("nor_conv_3x3",) * 6


def test_op_order_variant_derives_canonical_names():
    order = ["none", "avg_pool_3x3", "nor_conv_3x3", "nor_conv_1x1", "skip_connect"]  # the OStr code's order
    space = get_space("nb201", {**SETTINGS, "op_order": order})
    alpha = torch.zeros(6, 5)
    alpha[:, order.index("skip_connect")] = 1.0
    mask = {"cell": torch.ones(6, 5, dtype=torch.bool)}
    arch = space.derive({"cell": mixing_weights(alpha, mask["cell"], "softmax")}, mask, False)
    assert str_to_ops(arch) == ("skip_connect",) * 6


def test_full_size_supernet_shape():
    space = get_space("nb201", {**SETTINGS, "channels": 16, "cells_per_stage": 5})
    state = init_state(space, 10, Optimisation(epochs=1), seed=0, device="cpu")
    n_cells = sum(isinstance(m, SearchCell) for m in state.model.modules())
    assert n_cells == 15
    assert state.alpha["cell"].shape == (6, 5)
    assert 2e-3 > state.alpha["cell"].abs().mean() > 4e-4  # 1e-3 * randn: E|x| = 0.8e-3
    logits = state.model(torch.randn(2, 3, 32, 32), state.weights(), state.active())
    assert logits.shape == (2, 10)
