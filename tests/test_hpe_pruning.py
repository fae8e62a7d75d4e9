"""HPE-DARTS pruning: soft decay (paper Eq. 7), hard pruning and "ops kept" schedules."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline_steps.common.errors import NasflowError
from pipeline_steps.spaces import darts, get_space, nb201
from pipeline_steps.transforms.pruning import (decay_factor, hard_prune, least_important, pops_per_stage, soft_decay,
                                               validate_schedule)
from test_hpe_parts import DARTS_TINY, NB201_TINY, make_state, set_alpha

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- soft decay


def test_decay_factor_follows_eq7_with_i_counted_from_zero_in_the_stage():
    assert [decay_factor(i, 5) for i in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert math.prod(decay_factor(i, 5) for i in range(5)) == pytest.approx(0.0384)
    assert [decay_factor(i, 5, "E_prune_minus_one") for i in range(5)] == pytest.approx([1, 0.75, 0.5, 0.25, 0])
    for bad in (-1, 5):
        with pytest.raises(NasflowError, match="outside 0..4"):
            decay_factor(bad, 5)
    with pytest.raises(NasflowError, match="E_prune >= 2"):
        decay_factor(0, 1, "E_prune_minus_one")


def test_soft_decay_scales_the_k_least_important_alive_ops_in_place():
    state = make_state("nb201")
    set_alpha(state, seed=14)
    alpha = state.alpha["cell"]
    param_id = id(alpha)
    state.mask["cell"][0, 4] = False                      # dead and least important: never decayed
    importance = {"cell": torch.tensor([[0.5, 0.4, 0.3, 0.2, -9.0]] * 6, dtype=torch.float64)}
    importance["cell"][1] = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.9])   # tie between columns 1 and 3
    before = alpha.detach().clone()
    record = soft_decay(state.alpha, importance, state.mask, k_soft=2, epoch_in_stage=2, epochs_per_stage=5)
    assert id(state.alpha["cell"]) == param_id and record.factor == pytest.approx(0.6)
    expected_low = [[3, 2]] + [[0, 1]] + [[4, 3]] * 4       # ties: the lower column ranks lower
    assert record.decayed["cell"] == expected_low
    factors = torch.ones(6, 5, dtype=before.dtype)
    for e, low in enumerate(expected_low):
        factors[e, low] = 0.6
    torch.testing.assert_close(alpha.detach(), before * factors, rtol=0, atol=0)
    torch.testing.assert_close(record.alpha_before["cell"], before)
    torch.testing.assert_close(record.alpha_after["cell"], before * factors)
    assert record.to_dict()["decayed"]["cell"] == expected_low


def test_soft_decay_never_decays_the_most_important_op():
    mask = {"cell": torch.tensor([[True, True, False], [True, False, False]])}
    alpha = {"cell": torch.ones(2, 3)}
    importance = {"cell": torch.tensor([[1.0, 2.0, 0.0], [1.0, 0.0, 0.0]])}
    record = soft_decay(alpha, importance, mask, k_soft=5, epoch_in_stage=1, epochs_per_stage=2)
    assert record.decayed["cell"] == [[0], []]
    assert alpha["cell"].tolist() == [[0.5, 1.0, 1.0], [1.0, 1.0, 1.0]]
    alpha = {"cell": torch.ones(2, 3)}
    mask["cell"][0, 2] = True
    record = soft_decay(alpha, importance, mask, k_soft="alive_minus_one", epoch_in_stage=1, epochs_per_stage=2)
    assert record.decayed["cell"] == [[2, 0], []]


def test_the_same_op_decayed_every_epoch_of_a_stage_ends_at_the_product_of_factors():
    mask = {"cell": torch.ones(1, 3, dtype=torch.bool)}
    alpha = {"cell": torch.tensor([[1.0, 1.0, 1.0]])}
    importance = {"cell": torch.tensor([[0.0, 1.0, 2.0]])}
    for i in range(5):
        soft_decay(alpha, importance, mask, k_soft=1, epoch_in_stage=i, epochs_per_stage=5)
    assert alpha["cell"][0].tolist() == pytest.approx([0.0384, 1.0, 1.0])


def test_a_decayed_op_that_recovers_is_not_hard_pruned():
    """Stage of [5, 3, 1] on one edge: the conv is decayed early, its alpha then grows back under
    training and its importance recovers; the hard prune follows the importance at its time."""
    ops = nb201.OPS
    conv = ops.index("nor_conv_3x3")
    mask = {"cell": torch.ones(1, 5, dtype=torch.bool)}
    alpha = {"cell": torch.full((1, 5), 0.2)}
    early = {"cell": torch.tensor([[0.30, 0.50, 0.40, 0.10, 0.60]])}   # conv (col 3) least important
    record = soft_decay(alpha, early, mask, k_soft=2, epoch_in_stage=1, epochs_per_stage=5)
    assert conv in record.decayed["cell"][0] and alpha["cell"][0, conv] == pytest.approx(0.16)
    alpha["cell"][0, conv] = 0.45                                      # an Adam step raised it again
    late = {"cell": torch.tensor([[0.30, 0.50, 0.40, 0.90, 0.60]])}    # and it now matters most
    pruned = hard_prune(mask, late, pop=2)
    assert pruned.removed["cell"] == [[0, 2]] and mask["cell"][0, conv]
    # had the importance not recovered, the same prune removes it (the case above can fail)
    mask_again = {"cell": torch.ones(1, 5, dtype=torch.bool)}
    assert conv in hard_prune(mask_again, early, pop=2).removed["cell"][0]


# --------------------------------------------------------------------------- hard prune and schedules


@pytest.mark.parametrize("space_name,kept", [
    ("nb201", [5, 3, 1]), ("nb201", [5, 1]), ("darts", [8, 5, 3, 1]), ("darts", [8, 7, 6, 5, 4, 3, 2, 1]),
    ("darts", [8, 6, 4, 2, 1]), ("darts", [8, 5, 2, 1]), ("darts", [8, 4, 1])])
def test_a_schedule_ends_with_one_op_per_edge_and_removes_the_least_important(space_name, kept):
    space = get_space(space_name, NB201_TINY if space_name == "nb201" else DARTS_TINY)
    mask = space.initial_mask()
    pops = pops_per_stage(kept, mask)
    assert sum(pops) == len(space.ops) - 1
    gen = torch.Generator().manual_seed(len(kept))
    for stage, pop in enumerate(pops, start=1):
        importance = {k: torch.randn(m.shape, generator=gen, dtype=torch.float64) for k, m in mask.items()}
        before = {k: m.clone() for k, m in mask.items()}
        record = hard_prune(mask, importance, pop)
        for kind, m in mask.items():
            assert (m.sum(dim=1) == kept[stage]).all()
            for e in range(m.shape[0]):
                removed = record.removed[kind][e]
                assert len(removed) == pop and all(before[kind][e, o] and not m[e, o] for o in removed)
                survivors = importance[kind][e][m[e]]
                assert all(importance[kind][e, o] < survivors.min() for o in removed)
    assert all((m.sum(dim=1) == 1).all() for m in mask.values())


def test_hard_prune_never_removes_the_last_op():
    mask = {"cell": torch.tensor([[True, True, False], [False, True, False]])}
    importance = {"cell": torch.tensor([[0.2, 0.1, math.nan], [math.nan, 5.0, math.nan]])}
    record = hard_prune(mask, importance, pop=4)
    assert record.removed["cell"] == [[1], []]
    assert mask["cell"].tolist() == [[True, False, False], [False, True, False]]
    assert record.to_dict()["mask_after"]["cell"] == [[1, 0, 0], [0, 1, 0]]


def test_ranking_refuses_an_unscored_alive_op():
    with pytest.raises(NasflowError, match="NaN"):
        least_important(torch.tensor([0.1, math.nan]), torch.tensor([True, True]), 1)


def test_pops_per_stage():
    assert pops_per_stage([5, 3, 1]) == (2, 2)
    assert pops_per_stage([8, 5, 3, 1]) == (3, 2, 2)
    assert pops_per_stage([8, 7, 6, 5, 4, 3, 2, 1]) == (1,) * 7
    assert pops_per_stage([2, 1], darts.initial_mask("s1")) == (1,)


@pytest.mark.parametrize("kept,mask,message", [
    ([5, 3, 2], None, "must end at 1"),
    ([5, 3, 3, 1], None, "strictly decreasing"),
    ([3, 5, 1], None, "strictly decreasing"),
    ([1], None, "at least one stage"),
    ([], None, "at least one stage"),
    ([5.0, 3, 1], None, "list of integers"),
    ([5, True, 1], None, "list of integers"),
    ("531", None, "list of integers"),
    ([8, 5, 3, 1], darts.initial_mask("darts_no_none"), "has only 7; start the schedule at 7"),
    ([8, 5, 3, 1], darts.initial_mask("s1"), "has only 2"),
    ([5, 3, 1], darts.initial_mask("darts"), "starts at 5 ops but normal edge 0 has 8"),
])
def test_schedule_validation_errors(kept, mask, message):
    with pytest.raises(NasflowError, match=message) as err:
        validate_schedule(kept, mask)
    assert "\n" not in str(err.value)
