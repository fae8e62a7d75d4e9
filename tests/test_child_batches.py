"""Many NB201 children in one forward pass compute what each computes alone (P(a) of SE-NAS, SPOS
and the ranking diagnostic)."""
from __future__ import annotations

import copy
import itertools
import random

import pytest
import torch

from pipeline_steps.scores import child_eval
from pipeline_steps.spaces import get_space
from pipeline_steps.spaces.nb201 import OPS, all_arch_strings
from pipeline_steps.spaces.nb201_children import forward_children, grouped_batch_norm
from pipeline_steps.supernet import train
from pipeline_steps.supernet.state import Optimisation, init_state
from pipeline_steps.transforms import shrink, spos
from test_senas_parts import fake_data, mask_of

pytestmark = pytest.mark.usefixtures("one_thread")
ORDER = ["none", "avg_pool_3x3", "nor_conv_3x3", "nor_conv_1x1", "skip_connect"]


def trained_state(bn_affine: bool = False, cells_per_stage: int = 1):
    space = get_space("nb201", {"channels": 3, "cells_per_stage": cells_per_stage, "op_order": ORDER,
                                "bn_affine": bn_affine})
    state = init_state(space, 10, Optimisation(epochs=1), seed=0, device="cpu")
    train.train_epoch(state, fake_data(steps=3), "spos", progress=False)
    state.model.double()
    return state


def images(n: int = 12, seed: int = 7):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64), torch.randint(10, (n,), generator=gen)


def alone(model, cell, x):
    weights, active = spos.one_hot_path({"cell": cell}, 5, "cpu")
    with torch.no_grad():
        return model(x, {"cell": weights["cell"].double()}, active)


@pytest.mark.parametrize("bn_affine,nhwc", [(False, False), (True, False), (False, True)])
def test_each_childs_logits_are_those_it_computes_alone(bn_affine, nhwc):
    state = trained_state(bn_affine, cells_per_stage=2)
    if nhwc:  # the search networks' default layout
        state.model.to(memory_format=torch.channels_last)
    x, _ = images()
    cells = [(0, 0, 0, 0, 0, 0), (4, 4, 4, 4, 4, 4), (2, 1, 3, 0, 4, 2), (2, 2, 2, 2, 2, 2), (1, 0, 3, 3, 0, 4)]
    with child_eval.bn_mode(state.model, "batch_stats"):
        together = forward_children(state.model, x, cells).view(len(cells), len(x), -1)
        for k, cell in enumerate(cells):
            torch.testing.assert_close(together[k], alone(state.model, cell, x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("bn", child_eval.BN_MODES)
@pytest.mark.parametrize("per_pass", [2, 7, 64])
def test_batched_p_of_a_equals_one_child_at_a_time(bn, per_pass):
    state = trained_state()
    batches = [images(12, 1), images(9, 2)]
    archs = list(itertools.islice(all_arch_strings(), 3, 15625, 613))
    buffers = {n: b.clone() for n, b in state.model.named_buffers()}
    one = child_eval.evaluate_nb201(state.model, archs, batches, state.space.ops, bn)
    together = child_eval.evaluate_children(
        state.model, [child_eval.nb201_key(a, state.space.ops) for a in archs], batches, ("cell",), 5, bn,
        none_index=0, per_pass=per_pass)
    assert {a: together[child_eval.nb201_key(a, state.space.ops)] for a in archs} == one
    assert len(set(one.values())) > 3                      # the children really differ
    assert all(torch.equal(b, buffers[n]) for n, b in state.model.named_buffers())
    assert state.model.training


def test_children_of_a_shrunk_space_and_an_expanded_supernet_route_like_one_at_a_time():
    state = trained_state()
    alive = [[0, 2], [1, 2, 4], [2, 3], [0, 4], [1, 3], [2, 3, 4]]
    mask = mask_of(alive)
    shrink.expand(state.model, shrink.merged_child_spaces(mask, 4), mask)
    assert state.model.layers[0].merged_partials                 # merged groups with private copies
    # the private copies differ from the shared op, so a wrong route changes the logits
    for p in shrink.private_parameters(state.model):
        p.data.add_(torch.randn_like(p) * 0.3)
    archs = list(child_eval.current_space(mask, ("cell",)))
    batches = [images(10, 3)]
    one = child_eval.evaluate_children(state.model, archs, batches, ("cell",), 5)
    together = child_eval.evaluate_children(state.model, archs, batches, ("cell",), 5, per_pass=5)
    assert together == one
    x = batches[0][0]
    with child_eval.bn_mode(state.model, "batch_stats"):
        for cell in random.Random(0).sample([a[0] for a in archs], 6):
            torch.testing.assert_close(forward_children(state.model, x, [cell])[:len(x)], alone(state.model, cell, x),
                                       rtol=0, atol=1e-10)


def test_grouped_batch_norm_normalises_each_group_by_its_own_statistics():
    norm = torch.nn.BatchNorm2d(3, affine=True).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    model = torch.nn.Sequential(norm)
    model.train()
    norm.track_running_stats = False
    x = torch.randn(12, 3, 4, 4, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.2]).view(1, 3, 1, 1).double()
    running = norm.running_mean.clone()
    with grouped_batch_norm(model, 4):
        out = model(x)
    expected = torch.cat([copy.deepcopy(norm)(x[i:i + 4]) for i in range(0, 12, 4)])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert torch.equal(norm.running_mean, running)
    assert "forward" not in vars(norm)                            # the module's own forward again


def test_children_share_a_pass_on_a_gpu_only():
    model = trained_state().model
    assert child_eval.children_per_pass(model, torch.device("cpu"), 512) == 1
    assert child_eval.children_per_pass(model, torch.device("cuda"), 512) == 16
    darts = get_space("darts", {"channels": 4, "layers": 2}).build(10)
    assert child_eval.children_per_pass(darts, torch.device("cuda"), 512) == 1
    assert OPS[0] == "none"


def test_a_pass_that_does_not_fit_the_gpu_is_split_in_halves(monkeypatch):
    state = trained_state()
    batches = [images(8, 4)]
    archs = list(itertools.islice(((a,) for a in itertools.product(range(5), repeat=6)), 100, 3000, 401))
    one = child_eval.evaluate_children(state.model, archs, batches, ("cell",), 5)
    passes = []

    def small_gpu(model, x, cells):
        if len(cells) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (a test)")
        passes.append(len(cells))
        return forward_children(model, x, cells)

    monkeypatch.setattr(child_eval, "forward_children", small_gpu)
    assert child_eval.evaluate_children(state.model, archs, batches, ("cell",), 5, per_pass=7) == one
    assert max(passes) == 2 and sum(passes) == len(archs)
