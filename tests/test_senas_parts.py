"""SE-NAS building blocks, part one: SPOS sampling and snapshots, P(a), rank correlations (part two,
scores, shrink, merge and expansion, is test_senas_shrink.py)."""
from __future__ import annotations

import copy
import itertools
from types import SimpleNamespace

import pytest
import torch
from scipy import stats

from pipeline_steps.data.search_data import DataSettings, SearchData
from pipeline_steps.evaluation.benchmark import load_benchmark
from pipeline_steps.scores import child_eval
from pipeline_steps.spaces import get_space
from pipeline_steps.spaces.nb201 import OPS, all_arch_strings
from pipeline_steps.supernet import train
from pipeline_steps.supernet.state import Optimisation, init_state
from pipeline_steps.transforms import shrink, spos

pytestmark = pytest.mark.usefixtures("one_thread")
NODES = spos.edge_nodes("nb201")


def fake_data(steps: int = 4, batch: int = 8) -> SimpleNamespace:
    """Random images: what the SPOS step needs of SearchData."""
    def train_batch(state):
        gen = state.generator
        return torch.randn(batch, 3, 8, 8, generator=gen), torch.randint(10, (batch,), generator=gen)
    return SimpleNamespace(steps_per_epoch=steps, train_batch=train_batch)


def tiny_state(cells_per_stage: int = 1, seed: int = 0, op_order=OPS):
    space = get_space("nb201", {"channels": 2, "cells_per_stage": cells_per_stage, "op_order": list(op_order)})
    return init_state(space, 10, Optimisation(epochs=1), seed=seed, device="cpu")


def mask_of(alive: list[list[int]], n_ops: int = 5) -> dict[str, torch.Tensor]:
    m = torch.zeros(len(alive), n_ops, dtype=torch.bool)
    for e, ops in enumerate(alive):
        m[e, ops] = True
    return {"cell": m}


def forward(model, ops, x):
    weights, active = spos.one_hot_path({"cell": ops}, 5, "cpu")
    return model(x, weights, active)


def test_sampling_is_uniform_over_alive_ops_and_redraws_all_none_nodes():
    # node 1: no none; node 2: none alive on both edges, so (none, none) is redrawn; node 3 cannot be all none
    mask = mask_of([[1, 2, 3], [0, 2], [0, 4], [1, 2, 3, 4], [0, 3], [2]])["cell"]
    gen = torch.Generator().manual_seed(0)
    draws = [spos.sample_cell(mask, gen, NODES, none_index=0) for _ in range(1500)]
    for d in draws:
        assert all(mask[e, o] for e, o in enumerate(d))
    for e, alive in ((0, [1, 2, 3]), (3, [1, 2, 3, 4]), (4, [0, 3])):
        counts = [sum(d[e] == o for d in draws) for o in alive]
        assert stats.chisquare(counts).pvalue > 1e-3, (e, counts)
    node2 = [(d[1], d[2]) for d in draws]
    assert (0, 0) not in node2
    combos = [node2.count(c) for c in ((0, 4), (2, 0), (2, 4))]
    assert stats.chisquare(combos).pvalue > 1e-3, combos
    # without the rule (none, none) is one of four equally likely pairs
    free = [spos.sample_cell(mask, gen, NODES, 0, resample_all_none=False)[1:3] for _ in range(800)]
    assert 150 < free.count((0, 0)) < 250
    # a node that can only compute none takes it instead of looping forever
    only_none = mask_of([[0], [0, 1], [1], [1], [1], [1]])["cell"]
    assert spos.sample_cell(only_none, gen, NODES, 0)[0] == 0


def _cell_paths_of_one_step(state, settings) -> list[tuple[int, ...]]:
    seen = []
    handles = [cell.register_forward_pre_hook(lambda m, args: seen.append(tuple(o for (o,) in args[-1])))
               for _, cell in spos.search_cells(state.model)]
    spos.spos_step(state, fake_data(), settings, train.StepStats(), train.StepStats(), [])
    for h in handles:
        h.remove()
    return seen


def test_per_arch_shares_one_cell_across_cells_per_cell_does_not_and_both_replay_from_the_generator():
    state = tiny_state(cells_per_stage=2)
    state.mask["cell"][:, 0] = False        # none dead: every op of a path is a real computation
    state.mask["cell"][2, 3] = False
    per_arch = [_cell_paths_of_one_step(state, spos.SposSettings()) for _ in range(3)]
    assert all(len(set(step)) == 1 for step in per_arch)            # 6 cells, one architecture
    saved = state.generator.get_state()
    per_cell = [_cell_paths_of_one_step(state, spos.SposSettings(sampling="per_cell")) for _ in range(3)]
    assert any(len(set(step)) > 1 for step in per_cell)
    assert all(state.mask["cell"][e, o] for step in per_cell for ops in step for e, o in enumerate(ops))
    state.generator.set_state(saved)                                # resume: same draws again
    assert [_cell_paths_of_one_step(state, spos.SposSettings(sampling="per_cell")) for _ in range(3)] == per_cell


def test_spos_step_updates_only_the_sampled_path_and_never_alpha():
    state = tiny_state()
    state.mask["cell"][:, 0] = False
    alpha = state.alpha["cell"].detach().clone()
    _cell_paths_of_one_step(state, spos.SposSettings())   # a first step leaves momentum behind
    before = {n: p.detach().clone() for n, p in state.model.named_parameters()}
    path = _cell_paths_of_one_step(state, spos.SposSettings())[0]
    assert "spos" in train.MODES
    changed = {n for n, p in state.model.named_parameters() if not torch.equal(p, before[n])}
    for e, key in enumerate(("1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2")):
        for o in range(5):
            names = {n for n in before if f".edges.{key}.{o}." in n}
            if names:
                assert (names <= changed) == (o == path[e]) and (names & changed == set()) == (o != path[e])
    assert "classifier.weight" in changed
    assert torch.equal(state.alpha["cell"].detach(), alpha)


def test_averaged_weights_are_the_mean_of_the_snapshots_bn_buffers_included():
    assert spos.snapshot_steps(10, 3) == [2, 5, 9] and spos.snapshot_steps(2, 5) == [0, 1]   # evenly, ending the epoch
    assert spos.snapshot_steps(100, 10) == list(range(9, 100, 10))
    state = tiny_state()
    average, states = spos.WeightAverage(), []
    recorder = SimpleNamespace(after_weight_step=lambda st: states.append(copy.deepcopy(st.model.state_dict())))
    hooks = [recorder, spos.SnapshotHook(average, 6, 3)]
    train.train_epoch(state, fake_data(steps=6), "spos", hooks=hooks, progress=False)
    snaps = [states[i] for i in (1, 3, 5)]
    mean = average.mean()
    assert average.count == 3 and set(mean) == set(snaps[0])
    running = [n for n in mean if n.endswith(("running_mean", "running_var"))]
    assert running and any(not torch.equal(snaps[0][n], snaps[2][n]) for n in running)
    for name, value in mean.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, torch.stack([s[name] for s in snaps]).mean(0), rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(value, snaps[-1][name])        # step counters: the latest
    twin = spos.averaged_copy(state.model, average)
    for name, value in twin.state_dict().items():
        torch.testing.assert_close(value, mean[name])
        assert torch.equal(state.model.state_dict()[name], snaps[-1][name])   # the live model is untouched
    restored = spos.WeightAverage()
    restored.load_state_dict(average.state_dict())
    assert all(torch.equal(restored.mean()[n], mean[n]) for n in mean)


def test_child_accuracies_match_one_forward_per_child_and_leave_bn_buffers_alone():
    state = tiny_state(op_order=["none", "avg_pool_3x3", "nor_conv_3x3", "nor_conv_1x1", "skip_connect"])
    train.train_epoch(state, fake_data(steps=3), "spos", progress=False)
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(16, 3, 8, 8, generator=gen), torch.randint(10, (16,), generator=gen)) for _ in range(2)]
    archs = list(itertools.islice(all_arch_strings(), 0, 15625, 1999))
    buffers = {n: b.clone() for n, b in state.model.named_buffers()}
    for bn in ("batch_stats", "eval"):
        p = child_eval.evaluate_nb201(state.model, archs, batches, state.space.ops, bn)
        twin = copy.deepcopy(state.model).train(bn == "batch_stats")   # batch statistics: its buffers do not matter
        for arch in archs:
            key = child_eval.nb201_key(arch, state.space.ops)
            with torch.no_grad():
                hits = sum(int((forward(twin, key[0], x).argmax(1) == y).sum()) for x, y in batches)
            assert p[arch] == pytest.approx(100 * hits / 32)
        assert all(torch.equal(b, buffers[n]) for n, b in state.model.named_buffers())
    assert state.model.training
    assert child_eval.nb201_arch(child_eval.nb201_key(archs[3], state.space.ops), state.space.ops) == archs[3]


def test_scoring_batches_are_distinct_unaugmented_d_val_images(tiny_folder):
    data = SearchData(DataSettings("cifar10", str(tiny_folder), source="folder"), batch_size=32, device="cpu")
    batches = child_eval.scoring_batches(data, torch.Generator().manual_seed(0), images=50, batch_size=32)
    assert [len(y) for _, y in batches] == [32, 18]
    pool_x, pool_y = data.images.batch(data.val_idx)
    picked = [(x, y) for xs, ys in batches for x, y in zip(xs, ys)]
    matches = [[i for i in range(len(pool_y)) if torch.equal(pool_x[i], x) and pool_y[i] == y] for x, y in picked]
    assert all(len(m) == 1 for m in matches) and len({m[0] for m in matches}) == 50


def test_children_differing_only_on_void_edges_are_computed_once_and_score_the_same():
    state = tiny_state()
    train.train_epoch(state, fake_data(steps=2), "spos", progress=False)
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    batches = [(x, torch.randint(10, (16,), generator=torch.Generator().manual_seed(5)))]
    archs = [(ops,) for ops in itertools.product((0, 3), repeat=6)]          # none / nor_conv_3x3
    forwards = []
    state.model.register_forward_pre_hook(lambda *_: forwards.append(1))
    fast = child_eval.evaluate_children(state.model, archs, batches, ("cell",), 5, none_index=0)
    n_fast = len(forwards)
    slow = child_eval.evaluate_children(state.model, archs, batches, ("cell",), 5)
    classes = child_eval._equivalence(state.model, archs, 0, "batch_stats")
    assert fast == slow and n_fast == len(set(classes.values())) < 40

    def assert_same_logits(representative):
        with child_eval.bn_mode(state.model, "batch_stats"), torch.no_grad():
            assert all(torch.equal(forward(state.model, a[0], x), forward(state.model, r[0], x))
                       for a, r in representative.items())

    assert_same_logits(classes)
    assert child_eval._equivalence(state.model, archs, 0, "eval") == {a: a for a in archs}   # BN(0) != 0 there
    affine = get_space("nb201", {"channels": 2, "cells_per_stage": 1, "bn_affine": True}).build(10)
    assert child_eval._equivalence(affine, archs, 0, "batch_stats") == {a: a for a in archs}
    # merged groups route by every op on their edges: such children stay apart
    shrink.expand(state.model, shrink.merged_child_spaces(mask_of([[0, 3]] * 6), 4), mask_of([[0, 3]] * 6))
    grouped = child_eval._equivalence(state.model, archs, 0, "batch_stats")
    assert len(set(grouped.values())) > n_fast
    assert_same_logits(grouped)


def test_kendall_tau_and_spearman_on_a_hand_case_and_benchmark_values():
    truth = {"d": 4.0, "a": 1.0, "c": 2.0, "b": 3.0, "only_in_truth": 0.0}
    predicted = {"only_predicted": 99.0, "a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0}
    # pairs: (b,c) discordant, the other five concordant: tau = (5 - 1) / 6; rho = 1 - 6*2/(4*15)
    r = child_eval.rank_correlation(predicted, truth)
    assert r["kendall_tau"] == pytest.approx(2 / 3) and r["spearman_rho"] == pytest.approx(0.8) and r["n"] == 4
    assert child_eval.rank_correlation(dict(truth), truth)["kendall_tau"] == pytest.approx(1.0)
    assert child_eval.rank_correlation({k: -v for k, v in truth.items()}, truth)["kendall_tau"] == pytest.approx(-1.0)
    bench = load_benchmark()
    archs = list(itertools.islice(all_arch_strings(), 0, 15625, 3001))
    got = child_eval.benchmark_accuracies(bench, archs, "cifar10_valid_acc")
    assert got == {a: bench.lookup(a)["cifar10_valid_acc"] for a in archs}
