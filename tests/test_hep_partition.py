"""HEP-NAS building blocks, the partition: the min-cut split against brute force and the
hierarchies / split plans (children, SMD and gradient matching are in test_hep_parts.py)."""
from __future__ import annotations

import itertools

import pytest
import torch

from pipeline_steps.common.errors import NasflowError
from pipeline_steps.spaces import get_space
from pipeline_steps.transforms.partition import hierarchies, min_cut_split, split_plan

NB201 = {"channels": 4, "cells_per_stage": 1}
DARTS = {"op_set": "darts_no_none", "channels": 4, "layers": 3}


# --------------------------------------------------------------------------- min-cut split


def brute_force_split(d: torch.Tensor, rule: str) -> tuple[frozenset, float]:
    """Over every two-group partition the rule's group sizes allow, the least within-group distance."""
    n, best, best_cost = d.shape[0], None, float("inf")
    for bits in itertools.product((0, 1), repeat=n):
        a, b = [i for i in range(n) if bits[i] == 0], [i for i in range(n) if bits[i] == 1]
        if not (2 in (len(a), len(b)) if rule == "nb201" else min(len(a), len(b)) >= 2):
            continue
        cost = sum(float(d[i, j]) for g in (a, b) for i, j in itertools.combinations(g, 2))
        if cost < best_cost:
            best, best_cost = frozenset({frozenset(a), frozenset(b)}), cost
    return best, best_cost


def random_distance(n: int, seed: int) -> torch.Tensor:
    a = torch.rand(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (a + a.T).fill_diagonal_(0)


def planted_distance(n: int, groups: list[tuple[int, ...]]) -> torch.Tensor:
    d = torch.ones(n, n)
    for group in groups:
        for i, j in itertools.permutations(group, 2):
            d[i, j] = 0.1
    return d.fill_diagonal_(0)


@pytest.mark.parametrize("rule,n", [("nb201", 5), ("darts", 6), ("darts", 7), ("darts", 8)])
def test_min_cut_equals_brute_force_over_all_two_group_partitions(rule, n):
    for seed in range(10):
        d = random_distance(n, seed)
        (g0, g1), cost = min_cut_split(d, rule)
        expected, expected_cost = brute_force_split(d, rule)
        assert frozenset({frozenset(g0), frozenset(g1)}) == expected
        assert cost == pytest.approx(expected_cost)


def test_nb201_split_is_the_papers_min_cut_on_similarity():
    """Eq. 2: with sizes fixed at 2|3, least within-group distance = least cross-group GM = 1 - d."""
    for seed in range(20):
        gm = 1 - random_distance(5, seed)
        cut = {frozenset(p): sum(float(gm[i, j]) for i in p for j in range(5) if j not in p)
               for p in itertools.combinations(range(5), 2)}
        (g0, _), _ = min_cut_split(1 - gm, "nb201")
        assert frozenset(g0) == min(cut, key=cut.get)


def test_min_cut_finds_planted_groups_names_them_by_op_id_and_breaks_ties_like_the_code():
    d = planted_distance(5, [(0, 3), (1, 2, 4)])
    assert min_cut_split(d, "nb201")[0] == ((0, 3), (1, 2, 4))
    assert min_cut_split(d, "nb201", ops=(10, 11, 12, 13, 14))[0] == ((10, 13), (11, 12, 14))
    assert min_cut_split(planted_distance(7, [(1, 4, 6), (0, 2, 3, 5)]), "darts")[0] == ((1, 4, 6), (0, 2, 3, 5))
    assert min_cut_split(torch.zeros(5, 5), "nb201")[0] == ((0, 1), (2, 3, 4))           # ties: first candidate
    assert min_cut_split(torch.zeros(7, 7), "darts")[0] == ((0, 1), (2, 3, 4, 5, 6))
    # equal distances are no tie for the darts rule: fewer pairs sit inside balanced groups
    assert min_cut_split(torch.ones(7, 7), "darts")[0] == ((0, 1, 2), (3, 4, 5, 6))
    with pytest.raises(NasflowError, match="split rule"):
        min_cut_split(torch.ones(5, 5), "halves")


# --------------------------------------------------------------------------- hierarchies and plans


def test_hierarchies_are_the_incoming_edges_of_each_intermediate_node():
    assert hierarchies(get_space("nb201", NB201)) == [[0], [1, 2], [3, 4, 5]]
    assert hierarchies(get_space("darts", DARTS)) == [[0, 1], [2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12, 13]]


def test_split_plan_options():
    darts_space, nb201_space = get_space("darts", DARTS), get_space("nb201", NB201)
    plan = split_plan(darts_space)
    assert plan == [tuple(("normal", e) for e in h) for h in hierarchies(darts_space)]   # reduce never split
    assert split_plan(nb201_space) == [tuple(("cell", e) for e in h) for h in ([0], [1, 2], [3, 4, 5])]
    assert split_plan(darts_space, order="reverse") == plan[::-1]
    assert split_plan(darts_space, levels=2) == plan[:2]
    edge_wise = split_plan(darts_space, granularity="edge")
    assert edge_wise == [(("normal", e),) for e in range(14)]
    shuffled = split_plan(darts_space, granularity="edge", order="random", seed=3)
    assert shuffled == split_plan(darts_space, granularity="edge", order="random", seed=3)
    assert shuffled != edge_wise and sorted(shuffled) == sorted(edge_wise)
    assert split_plan(darts_space, granularity="edge", order="random", seed=4) != shuffled
    both = split_plan(darts_space, cell_types=("normal", "reduce"))
    assert both[:2] == [(("normal", 0), ("normal", 1)), (("reduce", 0), ("reduce", 1))]
    with pytest.raises(NasflowError, match="seed"):
        split_plan(darts_space, order="random")
    with pytest.raises(NasflowError, match="cell type"):
        split_plan(nb201_space, cell_types=("normal",))
