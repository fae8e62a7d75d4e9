"""SE-NAS building blocks, part two: SI/SC/S scores, shrink, merge and per-partial-model expansion
(part one, SPOS sampling, snapshots and P(a), is test_senas_parts.py)."""
from __future__ import annotations

import copy
import itertools
import statistics

import pytest
import torch
from scipy import stats

from pipeline_steps.scores import child_eval, senas
from pipeline_steps.spaces.nb201 import EDGES
from pipeline_steps.supernet import train
from pipeline_steps.transforms import shrink, spos

from test_senas_parts import fake_data, forward, mask_of, tiny_state

pytestmark = pytest.mark.usefixtures("one_thread")
NODES = spos.edge_nodes("nb201")


def test_scores_on_a_hand_example():
    # edge 0: ops {0, 1}; edge 1: ops {1, 2, 3}
    mask = mask_of([[0, 1], [1, 2, 3]], n_ops=4)
    p = {((0, 1),): 60.0, ((0, 2),): 70.0, ((0, 3),): 80.0, ((1, 1),): 40.0, ((1, 2),): 50.0, ((1, 3),): 90.0}
    scores = senas.operator_scores(p, mask, ("cell",))
    si, sc, s = scores.si["cell"], scores.sc["cell"], scores.s["cell"]
    assert si[0, 0] == 70 and si[0, 1] == 60 and si[1, 1] == 50 and si[1, 2] == 60 and si[1, 3] == 85
    assert sc[0, 0] == sc[0, 1] == 25                              # population variance of (70, 60)
    assert sc[1, 2] == pytest.approx(650 / 3)
    # mean SI over R = 65, mean SC over R (per operator) = (2*25 + 3*650/3) / 5 = 140
    expected = {(0, 0): 9800 / 1625, (0, 1): 8400 / 1625, (1, 1): 21000 / 42250, (1, 2): 25200 / 42250,
                (1, 3): 35700 / 42250}
    for (e, o), v in expected.items():
        assert s[e, o] == pytest.approx(v)
    assert torch.isnan(s[0, 2]) and torch.isnan(si[1, 0])
    assert scores.ranked() == [("cell", 1, 1), ("cell", 1, 2), ("cell", 1, 3), ("cell", 0, 1), ("cell", 0, 0)]
    new, dropped = shrink.shrink(mask, scores, 3)
    assert dropped == [("cell", 1, 1), ("cell", 1, 2), ("cell", 0, 1)]     # (1, 3) is its edge's last op
    assert new["cell"].sum(1).tolist() == [1, 1]
    assert scores.to_json(["a", "b", "c", "d"])["s"]["cell"][0]["c"] is None


def test_scores_match_brute_force_on_a_random_table():
    alive = [[1, 3], [0, 2, 4], [2], [1, 2, 3, 4], [0, 4], [1, 2, 3]]
    mask = mask_of(alive)
    gen = torch.Generator().manual_seed(7)
    archs = list(child_eval.current_space(mask, ("cell",)))
    assert len(set(archs)) == child_eval.space_size(mask, ("cell",)) == 2 * 3 * 4 * 2 * 3
    assert all(mask["cell"][e, o] for (ops,) in archs for e, o in enumerate(ops))
    p = {a: float(v) for a, v in zip(archs, 100 * torch.rand(len(archs), generator=gen))}
    scores = senas.operator_scores(p, mask, ("cell",))
    si = {(e, o): statistics.fmean(v for a, v in p.items() if a[0][e] == o) for e, ops in enumerate(alive) for o in ops}
    sc = {e: statistics.pvariance([si[e, o] for o in ops]) for e, ops in enumerate(alive)}
    r = [(e, o) for e, ops in enumerate(alive) if len(ops) > 1 for o in ops]
    mean_si, mean_sc = statistics.fmean(si[x] for x in r), statistics.fmean(sc[e] for e, _ in r)
    for (e, o), v in si.items():
        assert scores.si["cell"][e, o] == pytest.approx(v)
        assert scores.sc["cell"][e, o] == pytest.approx(sc[e])
        if (e, o) in r:
            assert scores.s["cell"][e, o] == pytest.approx((v / mean_si) / (sc[e] / mean_sc))
        else:
            assert torch.isnan(scores.s["cell"][e, o])
    assert len(scores.ranked()) == len(r)


def test_score_normalises_by_means_over_removable_operators_only():
    # sampled SI need not average to the same value on every edge, so R matters for the means
    mask = mask_of([[0, 1], [1, 2, 3], [4]], n_ops=5)
    si = {"cell": torch.tensor([[50, 70, 0, 0, 0], [0, 40, 60, 80, 0], [0, 0, 0, 0, 99]], dtype=torch.float64)}
    sc = senas.selection_confidence(si, mask)
    s = senas.score(si, sc, mask)["cell"]
    assert sc["cell"][0, 1] == 100 and sc["cell"][1, 1] == pytest.approx(800 / 3) and sc["cell"][2, 4] == 0
    mean_si, mean_sc = (50 + 70 + 40 + 60 + 80) / 5, (2 * 100 + 3 * 800 / 3) / 5
    assert s[0, 0] == pytest.approx((50 / mean_si) / (100 / mean_sc))
    assert s[1, 3] == pytest.approx((80 / mean_si) / ((800 / 3) / mean_sc))
    assert torch.isnan(s[2, 4])
    two = mask_of([[0, 1], [0, 1]], n_ops=2)
    si_flat = {"cell": torch.tensor([[5.0, 5.0], [3.0, 4.0]], dtype=torch.float64)}   # edge 0: SC = 0
    s_flat = senas.score(si_flat, senas.selection_confidence(si_flat, two), two)["cell"]
    assert s_flat[0].isinf().all() and s_flat[1].isfinite().all()   # no spread, no confidence to prune by


def test_sampled_importance_averages_each_operators_own_draws():
    mask = mask_of([[0, 1], [1, 2, 3]], n_ops=4)
    samples = senas.sample_archs_per_operator(mask, ("cell",), 400, torch.Generator().manual_seed(1))
    assert set(samples) == {("cell", 0, 0), ("cell", 0, 1), ("cell", 1, 1), ("cell", 1, 2), ("cell", 1, 3)}
    for (_, e, o), archs in samples.items():
        assert len(archs) == 400 and all(a[0][e] == o and mask["cell"][1 - e, a[0][1 - e]] for a in archs)
    other = [a[0][1] for a in samples[("cell", 0, 0)]]
    assert stats.chisquare([other.count(o) for o in (1, 2, 3)]).pvalue > 1e-3
    p = {((i, j),): 10.0 * i + j for i in range(2) for j in range(4)}
    si = senas.selection_importance(p, mask, ("cell",), {("cell", 1, 2): [((0, 2),), ((0, 2),), ((1, 2),)]})
    assert si["cell"][1, 2] == pytest.approx((2 + 2 + 12) / 3)     # repeats count as drawn


def test_shrink_removes_exactly_k_lowest_legal_operators_and_never_empties_an_edge():
    gen = torch.Generator().manual_seed(5)
    for trial in range(20):
        mask = {"cell": torch.rand(6, 5, generator=gen) < 0.6}
        mask["cell"][torch.arange(6), torch.randint(5, (6,), generator=gen)] = True
        r = senas.removable(mask)
        s = torch.where(r["cell"], torch.rand(6, 5, generator=gen, dtype=torch.float64), torch.tensor(float("nan")))
        scores = senas.OperatorScores(s, s, {"cell": s}, r)
        legal = int((mask["cell"].sum(1) - 1).sum())
        k = [3, legal, legal + 4][trial % 3]
        new, dropped = shrink.shrink(mask, scores, k)
        assert len(dropped) == min(k, legal) == int(mask["cell"].sum() - new["cell"].sum())
        assert (new["cell"].sum(1) >= 1).all() and not (new["cell"] & ~mask["cell"]).any()
        worst_dropped = max(float(s[e, o]) for _, e, o in dropped) if dropped else -1
        for e, o in torch.nonzero(new["cell"] & r["cell"]).tolist():       # every lower survivor was its edge's last
            if float(s[e, o]) < worst_dropped:
                assert int(new["cell"][e].sum()) == 1
        _, one_each = shrink.shrink(mask, scores, k, one_per_edge=True)
        assert len({e for _, e, _ in one_each}) == len(one_each)


def test_merge_groups_follow_the_papers_toy_example():
    # Fig. 3: 6 layers of 5 ops, shrunk, T = 6: layers 2-4 and 5-6 merge (counts chosen to fit the text)
    counts = [5, 2, 1, 3, 3, 2]
    assert shrink.merge_groups(counts, 6) == [(0,), (1, 2, 3), (4, 5)]
    alive = [[0, 1, 2, 3, 4], [0, 3], [2], [1, 2, 4], [0, 1, 3], [2, 4]]
    groups = shrink.merged_child_spaces(mask_of(alive), 6)
    assert [(g.edges, len(g.partial_models)) for g in groups] == [((1, 2, 3), 6), ((4, 5), 6)]
    assert groups[0].partial_models[0] == (0, 2, 1)
    assert set(groups[1].partial_models) == set(itertools.product([0, 1, 3], [2, 4]))
    assert shrink.MergedGroup.from_json(groups[0].to_json()) == groups[0]
    assert shrink.merge_groups([5] * 6, 50) == [(0, 1), (2, 3), (4, 5)]
    assert shrink.merge_groups([2, 2, 1, 3, 2, 1], 50) == [(0, 1, 2, 3, 4, 5)]   # whole space <= T: all private
    assert shrink.merged_child_spaces(mask_of([[1], [2], [3], [1], [1, 2], [4]]), 50) == [
        shrink.MergedGroup("cell", (0, 1, 2, 3, 4, 5), ((1, 2, 3, 1, 1, 4), (1, 2, 3, 1, 2, 4)))]
    assert shrink.merged_child_spaces(mask_of([[1], [2], [3], [1], [1], [4]]), 50) == []   # one partial model


ALIVE = [[1, 3], [2, 3], [3], [1, 2, 3], [3, 4], [2]]   # counts 2 2 1 3 2 1; T = 6: (e0, e1, e2), (e3, e4, e5)
A1, A2, A3 = (1, 2, 3, 2, 3, 2), (3, 2, 3, 2, 3, 2), (1, 2, 3, 3, 3, 2)   # A1/A2 differ in group 0, A1/A3 in group 1


def _grads(model, ops, x) -> set[int]:
    model.zero_grad(set_to_none=True)
    forward(model, ops, x).sum().backward()
    return {id(p) for p in model.parameters() if p.grad is not None}


def _edge_params(model, edges) -> set[int]:
    keys = [f"{i}<-{j}" for i, j in (EDGES[e] for e in edges)]
    return {id(p) for n, p in model.named_parameters() if any(f".edges.{k}." in n for k in keys)}


def test_expanded_partial_models_have_private_group_weights_and_share_the_rest():
    state = tiny_state()
    mask = mask_of(ALIVE)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    space = list(child_eval.current_space(mask, ("cell",)))
    state.model.eval()
    with torch.no_grad():
        before = {a: forward(state.model, a[0], x) for a in space}
    groups = shrink.merged_child_spaces(mask, 6)
    assert [g.edges for g in groups] == [(0, 1, 2), (3, 4, 5)]
    shrink.expand(state.model, groups, mask)
    with torch.no_grad():
        assert all(torch.equal(forward(state.model, a[0], x), y) for a, y in before.items())   # copies start equal
    g1, g2, g3 = (_grads(state.model, a, x) for a in (A1, A2, A3))
    group0, group1 = _edge_params(state.model, (0, 1, 2)), _edge_params(state.model, (3, 4, 5))
    assert g1 & group0 and g2 & group0 and not (g1 & g2 & group0)        # disjoint in the group (e1 too)
    assert (g1 - group0) == (g2 - group0)                                # shared elsewhere (group 1 too: same ops)
    assert not (g1 & g3 & group1) and (g1 - group1) == (g3 - group1)
    # a training step on A1 leaves A2's private weights alone
    optimizer = shrink.refresh_optimizer(state.w_optimizer, state.model)
    optimized = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert {id(p) for p in shrink.private_parameters(state.model)} <= optimized
    snapshot = {id(p): p.detach().clone() for p in state.model.parameters()}
    optimizer.zero_grad(set_to_none=True)
    forward(state.model, A1, x).sum().backward()
    optimizer.step()
    moved = {id(p) for p in state.model.parameters() if not torch.equal(p, snapshot[id(p)])}
    assert moved & g1 & group0 and not moved & (g2 - g1)
    # a deep copy (the averaged-weight model) routes through its own copies
    twin = copy.deepcopy(state.model)
    with torch.no_grad():
        torch.testing.assert_close(forward(twin, A1, x), forward(state.model, A1, x))
        for p in twin.parameters():
            p.add_(1.0)
        assert not torch.allclose(forward(twin, A1, x), forward(state.model, A1, x))
    # a checkpoint loads into a fresh supernet expanded by the same map
    fresh = tiny_state(seed=1).model.eval()
    shrink.expand(fresh, [shrink.MergedGroup.from_json(g.to_json()) for g in groups], mask)
    fresh.load_state_dict(state.model.state_dict())
    with torch.no_grad():
        for a in (A1, A2, A3):
            assert torch.equal(forward(fresh, a, x), forward(state.model, a, x))


def test_expanded_training_and_evaluation_route_through_the_partial_models_copy():
    state = tiny_state()
    state.mask = mask_of(ALIVE)
    shrink.expand(state.model, shrink.merged_child_spaces(state.mask, 6), state.mask)
    state.w_optimizer = shrink.refresh_optimizer(state.w_optimizer, state.model)
    state.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(state.w_optimizer, T_max=1)
    conv3 = state.model.layers[0].edges["1<-0"][3]
    assert isinstance(conv3, shrink.RoutedOp) and set(conv3.copies) == {"3_2_3", "3_3_3"}   # e0 = 3, e1 in {2, 3}
    assert shrink.partial_key((3, 2, 3)) == "3_2_3"
    shared = {n: t.clone() for n, t in conv3.shared.state_dict().items()}
    train.train_epoch(state, fake_data(steps=6), "spos", progress=False)
    assert all(torch.equal(t, shared[n]) for n, t in conv3.shared.state_dict().items())   # single paths never touch it
    assert any(not torch.equal(t, shared[n]) for c in conv3.copies.values() for n, t in c.state_dict().items())
    calls = []
    for key, module in [*conv3.copies.items(), ("shared", conv3.shared)]:
        module.register_forward_hook(lambda *_, key=key: calls.append(key))
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    child_eval.evaluate_children(state.model, [(A2,), (A1,)], [(x, torch.zeros(8, dtype=torch.long))], ("cell",), 5)
    assert calls == ["3_2_3"]                     # A2 runs e0 = conv3 on its copy; A1 has skip there
    # per-cell paths: each cell routes by the path it computes, not by the supernet's arguments
    seen = []
    for i, (_, cell) in enumerate(spos.search_cells(state.model)):
        cell.edges["1<-0"][3].copies["3_2_3"].register_forward_hook(lambda *_, i=i: seen.append(i))
    paths = [spos.one_hot_path({"cell": a}, 5, "cpu") for a in (A1, A2, A1)]
    with torch.no_grad(), spos.per_cell_paths(state.model, [(w["cell"], a["cell"]) for w, a in paths]):
        forward(state.model, A1, x)
    assert seen == [1]


def test_re_expansion_keeps_what_every_architecture_computes():
    state = tiny_state()
    mask = mask_of(ALIVE)
    shrink.expand(state.model, shrink.merged_child_spaces(mask, 6), mask)
    optimizer = shrink.refresh_optimizer(state.w_optimizer, state.model)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for a in (A1, A2, A3, (3, 3, 3, 1, 4, 2), (1, 2, 3, 2, 4, 2)):      # the copies drift apart
        optimizer.zero_grad(set_to_none=True)
        forward(state.model, a, x).square().mean().backward()
        optimizer.step()
    state.model.eval()
    # a group cut in two: e3's new copy for (3, 2, 3, 2) is the mean of the old (e3-e5) copies with
    # e3 = 2 (e4 is no longer fixed); e4's copy for (3, 2) the mean over every alive e3 op
    cut = copy.deepcopy(state.model)
    wide = shrink.merged_child_spaces(mask, 12)
    assert [g.edges for g in wide] == [(0, 1, 2, 3), (4, 5)]
    shrink.expand(cut, wide, mask)
    old_e3 = state.model.layers[0].edges["3<-0"][2].copies
    old_e4 = state.model.layers[0].edges["3<-1"][3].copies
    for new, old in ((cut.layers[0].edges["3<-0"][2].copies["3_2_3_2"], [old_e3["2_3_2"], old_e3["2_4_2"]]),
                     (cut.layers[0].edges["3<-1"][3].copies["3_2"], [old_e4[f"{o}_3_2"] for o in (1, 2, 3)])):
        for name, t in new.state_dict().items():
            if t.is_floating_point():
                torch.testing.assert_close(t, torch.stack([c.state_dict()[name] for c in old]).mean(0))
    assert not torch.equal(old_e3["2_3_2"][1].weight, old_e3["2_4_2"][1].weight)   # the mean was not trivial
    # no merged group left: the shared modules take the mean of their old copies
    plain = copy.deepcopy(state.model)
    shrink.expand(plain, [], mask)
    conv1 = plain.layers[0].edges["2<-0"][2]
    old = state.model.layers[0].edges["2<-0"][2].copies
    assert not isinstance(conv1, shrink.RoutedOp) and not shrink.private_parameters(plain)
    torch.testing.assert_close(conv1[1].weight, torch.stack([c[1].weight for c in old.values()]).mean(0))
    # old groups (e0-e2), (e3-e5) inside the new one: every copy is taken over exactly
    shrunk = mask_of([[1, 3], [2, 3], [3], [2], [3, 4], [2]])
    space = list(child_eval.current_space(shrunk, ("cell",)))
    with torch.no_grad():
        before = {a: forward(state.model, a[0], x) for a in space}
    regrouped = shrink.merged_child_spaces(shrunk, 8)
    assert [g.edges for g in regrouped] == [(0, 1, 2, 3, 4, 5)]
    shrink.expand(state.model, regrouped, shrunk)
    with torch.no_grad():
        assert all(torch.equal(forward(state.model, a[0], x), y) for a, y in before.items())
