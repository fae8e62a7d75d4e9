"""DARTS-PT and OStr-DARTS: their scores against brute force / finite differences, their selection
rules, DARTS-PT's schedule, and OStr's early stop."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline_steps.methods import get_method
from pipeline_steps.methods.darts_pt import candidate_ops, node_edges, op_edges, tuning_epochs
from pipeline_steps.scores.ostr import OStrStatistics
from pipeline_steps.scores.perturbation import (edge_removal_table, least_important, most_important, most_important_k,
                                                op_removal_table)
from pipeline_steps.spaces import get_space
from pipeline_steps.spaces.darts import EDGE_NODE
from pipeline_steps.spaces.nb201 import OPS, str_to_ops
from pipeline_steps.supernet.state import Optimisation, init_state
from pipeline_steps.supernet.train import StepSettings, StepStats, alpha_step, evaluate

NB201 = {"op_order": list(OPS), "bn_affine": False, "pool_bn": False, "channels": 3, "cells_per_stage": 1}
DARTS = {"op_set": "darts", "channels": 2, "layers": 3, "stem_multiplier": 1}


def tiny_state(space_name: str = "nb201", settings: dict = NB201, seed: int = 0, double: bool = False):
    state = init_state(get_space(space_name, settings), 3, Optimisation(epochs=1), seed=seed, device="cpu")
    with torch.no_grad():
        for a in state.alpha.values():
            a.copy_(0.7 * torch.randn(a.shape, generator=torch.Generator().manual_seed(seed + 5)))
    if double:
        state.model.double()
        for k, a in state.alpha.items():
            state.alpha[k] = torch.nn.Parameter(a.detach().double())
        state.a_optimizer = torch.optim.Adam(state.alpha.values(), lr=3e-4)
    return state


class OneBatch:
    """A stand-in for SearchData whose every validation batch is the same fixed batch."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def val_batch(self, generator):
        return self.x, self.y


def batch(n=6, size=6, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


# --------------------------------------------------------------------------- OStr


@pytest.mark.parametrize("space_name,settings", [("nb201", NB201), ("darts", DARTS)])
def test_ostr_star_is_the_first_order_loss_change_of_replacing_the_mixed_edge_by_one_op(one_thread, space_name,
                                                                                         settings):
    state = tiny_state(space_name, settings, double=True)
    state.mask[state.space.cell_types[0]][1, 2] = False  # a dead op scores 0
    x, y = batch(dtype=torch.double)
    stats = OStrStatistics()
    alpha_step(state, OneBatch(x, y), StepSettings(), StepStats(), [stats])
    scores = stats.finish_epoch()
    # the statistics were taken before the Adam step moved alpha: compare at that point, on a twin
    state2 = tiny_state(space_name, settings, double=True)
    state2.mask = {k: m.clone() for k, m in state.mask.items()}
    theta = {k: w.detach() for k, w in state2.weights().items()}
    active = state2.active()
    state2.model.train()

    def loss_with(weights):
        with torch.no_grad():
            return F.cross_entropy(state2.model(x, weights, active), y).item()

    h = 1e-6
    for kind in state2.space.cell_types:
        for e in (1, state2.space.num_edges - 1):
            for o in range(len(state2.space.ops)):
                if not state2.mask[kind][e, o]:
                    assert scores["ostr_star"][kind][e][o] == 0.0 and scores["ostr"][kind][e][o] == 0.0
                    continue
                # m_e -> m_e + t (o(x_e) - m_e): theta_e -> theta_e + t (onehot_o - theta_e), every cell of the type
                direction = -theta[kind][e].clone()
                direction[o] += 1.0
                plus = {k: w.clone() for k, w in theta.items()}
                minus = {k: w.clone() for k, w in theta.items()}
                plus[kind][e] += h * direction
                minus[kind][e] -= h * direction
                fd = abs(loss_with(plus) - loss_with(minus)) / (2 * h)
                assert scores["ostr_star"][kind][e][o] == pytest.approx(fd, rel=1e-5, abs=1e-9), (kind, e, o)
                # OStr = OStr* x softmax(alpha) (one batch)
                assert scores["ostr"][kind][e][o] == pytest.approx(fd * theta[kind][e, o].item(), rel=1e-5, abs=1e-10)


def test_ostr_statistics_are_per_batch_means_and_reset_every_epoch(one_thread):
    state = tiny_state()
    stats = OStrStatistics()
    per_batch = []
    for seed in (1, 2):
        x, y = batch(seed=seed)
        theta = state.weights()["cell"].detach().clone()
        alpha_step(state, OneBatch(x, y), StepSettings(), StepStats(), [stats])
        per_batch.append(state.alpha["cell"].grad.abs() / theta)
    scores = stats.finish_epoch()
    # OStr*: the division by theta happens per batch, before the mean
    torch.testing.assert_close(torch.tensor(scores["ostr_star"]["cell"]), (per_batch[0] + per_batch[1]) / 2)
    assert stats.finish_epoch() == {}


def test_ostr_derive_never_picks_none_and_keeps_the_two_strongest_inputs():
    nb = get_space("nb201", NB201)
    scores = torch.rand(6, 5)
    scores[:, 0] = 10.0  # `none` strongest everywhere: still never selected
    record = {"alpha": {"cell": torch.zeros(6, 5).tolist()}, "mask": {"cell": torch.ones(6, 5, dtype=torch.bool).tolist()},
              "scores": {"ostr": {"cell": scores.tolist()}}}
    method = get_method("ostr")
    settings = {"criterion": "ostr", "naive_pruning": "gw", "early_stop_epochs": None, "allow_none": False}
    ops = str_to_ops(method.derive(nb, record, settings))
    assert list(ops) == [OPS[1 + int(scores[e, 1:].argmax())] for e in range(6)]

    ds = get_space("darts", DARTS)
    strength = {k: torch.rand(14, len(ds.ops)) for k in ds.cell_types}
    record = {"alpha": {k: torch.zeros(14, len(ds.ops)).tolist() for k in ds.cell_types},
              "mask": {k: m.tolist() for k, m in ds.initial_mask().items()},
              "scores": {"ostr": {k: v.tolist() for k, v in strength.items()}}}
    genotype = method.derive(ds, record, settings)
    for kind, pairs in (("normal", genotype.normal), ("reduce", genotype.reduce)):
        s = strength[kind][:, 1:]  # column 0 is none
        start = 0
        for node in range(4):
            rows = s[start:start + node + 2]
            top2 = sorted(rows.max(1).values.argsort(descending=True)[:2].tolist(), key=lambda j: -rows[j].max())
            assert [j for _, j in pairs[2 * node:2 * node + 2]] == top2
            assert [op for op, _ in pairs[2 * node:2 * node + 2]] == [ds.ops[1 + int(rows[j].argmax())] for j in top2]
            start += node + 2


def test_ostr_early_stop_picks_the_first_epoch_stable_for_e_epochs():
    nb = get_space("nb201", NB201)
    method = get_method("ostr")

    def record(epoch, best_op):
        scores = torch.zeros(6, 5)
        scores[:, best_op] = 1.0
        return {"epoch": epoch, "alpha": {"cell": torch.zeros(6, 5).tolist()},
                "mask": {"cell": torch.ones(6, 5, dtype=torch.bool).tolist()},
                "scores": {"ostr": {"cell": scores.tolist()}}}

    history = [record(1, 1), record(2, 2), record(3, 2), record(4, 3), record(5, 3), record(6, 3), record(7, 3)]
    settings = {"criterion": "ostr", "naive_pruning": "gw", "early_stop_epochs": 2, "allow_none": False}
    assert method.select_record(nb, history, settings) == 5  # epochs 4, 5, 6 agree: stop at epoch 6
    assert method.select_record(nb, history, {**settings, "early_stop_epochs": None}) == 6
    assert method.select_record(nb, history, {**settings, "early_stop_epochs": 5}) == 6  # never stable: last


# --------------------------------------------------------------------------- DARTS-PT


def test_pt_removal_accuracy_equals_evaluating_with_the_op_weight_zeroed(one_thread):
    state = tiny_state()
    batches = [batch(n=8, seed=s) for s in (3, 4)]
    edge = 4
    rows = op_removal_table(state, batches, "cell", edge, list(range(5)))
    for row in rows:  # direct: every op computed, the one weight set to 0, nothing renormalised
        w = state.weights()
        w["cell"] = w["cell"].detach().clone()
        w["cell"][edge, row["index"]] = 0.0
        loss, acc = evaluate(state, batches, w, {"cell": [list(range(5))] * 6}, train_bn=True)
        assert row["acc"] == pytest.approx(acc) and row["loss"] == pytest.approx(loss, rel=1e-5)
    chosen = most_important(rows, "acc")
    assert rows[chosen]["acc"] == min(r["acc"] for r in rows)
    assert chosen == min(range(5), key=lambda i: (rows[i]["acc"], i))  # first minimum wins ties
    assert rows[most_important(rows, "loss")]["loss"] == max(r["loss"] for r in rows)


def test_pt_edge_removal_zeroes_the_whole_row(one_thread):
    state = tiny_state("darts", DARTS)
    batches = [batch(n=8, size=8, seed=5)]
    rows = edge_removal_table(state, batches, "normal", [2, 3, 4])
    for row in rows:
        w = {k: v.detach().clone() for k, v in state.weights().items()}
        w["normal"][row["edge"]] = 0.0
        _, acc = evaluate(state, batches, w, state.active(), train_bn=True)
        assert row["acc"] == pytest.approx(acc)
    rows = [{"edge": 0, "acc": 50.0}, {"edge": 1, "acc": 70.0}, {"edge": 2, "acc": 70.0}]
    assert least_important(rows, "acc") == 2  # `iterative`: highest ACC\e; the last maximum wins ties
    # `one_pass`: the two lowest ACC\e (highest loss), the earlier row first on ties
    rows = [{"acc": 70.0, "loss": 1.0}, {"acc": 50.0, "loss": 2.0}, {"acc": 70.0, "loss": 1.0},
            {"acc": 50.0, "loss": 2.0}, {"acc": 60.0, "loss": 1.5}]
    assert most_important_k(rows, "acc", 2) == [1, 3] and most_important_k(rows, "loss", 2) == [1, 3]
    assert most_important_k(rows, "acc", 4) == [1, 3, 4, 0]
    assert most_important_k(rows, "acc", 1) == [most_important(rows, "acc")]


def test_pt_schedule_matches_the_authors_scripts():
    nb = tiny_state()
    assert tuning_epochs(nb, 5) == 25 and tuning_epochs(nb, 1) == 6
    ds = tiny_state("darts", {**DARTS, "op_set": "darts_no_none"})
    assert tuning_epochs(ds, 5) == 81
    assert tiny_state("darts", DARTS).space.ops[0] == "none"
    assert all(0 not in candidate_ops(tiny_state("darts", DARTS), "normal", e) for e in range(14))


@pytest.mark.parametrize("topology", ["one_pass", "iterative"])
@pytest.mark.parametrize("variant", ["darts_pt", "darts_pt_mag"])
def test_pt_decisions_discretise_ops_then_prune_inputs_to_two(one_thread, variant, topology):
    state = tiny_state("darts", {**DARTS, "op_set": "s3"})  # RobustDARTS S3: 2 candidates per edge, cheap
    method = get_method(variant)
    s = {"variant": method.variant, "criterion": "acc", "topology": topology}
    state.extra["pt"] = {"decisions": []}
    val = [batch(n=8, size=8, seed=6)]
    t = 0
    while op_edges(state, "normal") or op_edges(state, "reduce"):
        method.decide(state, val, t, s)
        t += 1
    assert t == 14
    for kind in ("normal", "reduce"):
        assert all(int(state.mask[kind][e].sum()) == 1 for e in range(14))
    while any(len(node_edges(state, "normal", n)) > 2 for n in set(EDGE_NODE)):
        method.decide(state, val, t, s)
        t += 1
    assert t == 17
    decisions = state.extra["pt"]["decisions"]
    assert [d["type"] for d in decisions] == ["op"] * 28 + ["topology"] * 6
    assert all(d["rule"] == topology for d in decisions[28:])
    for kind in ("normal", "reduce"):
        for node in set(EDGE_NODE):
            assert len(node_edges(state, kind, node)) == 2
    genotype = state.space.derive(state.weights(), state.mask, False)
    assert len(genotype.normal) == 8 and "none" not in {op for op, _ in genotype.normal + genotype.reduce}


def test_pt_op_decision_keeps_the_op_whose_removal_hurts_most(one_thread):
    state = tiny_state()
    method = get_method("darts_pt")
    state.extra["pt"] = {"decisions": []}
    val = [batch(n=8, seed=7)]
    method.decide(state, val, 0, {"variant": "pt", "criterion": "acc"})
    (d,) = state.extra["pt"]["decisions"]
    accs = [r["acc"] for r in d["table"]]
    assert d["chosen"] == d["table"][accs.index(min(accs))]["op"]
    row = state.mask["cell"][d["edge"]]
    assert row.sum() == 1 and OPS[int(row.nonzero())] == d["chosen"]
    assert state.weights()["cell"][d["edge"]].max() == 1.0  # the decided edge is one-hot


def test_pt_eval_images_scores_every_decision_on_one_random_subset_of_d_val_kept_across_a_resume(tiny_folder):
    from types import SimpleNamespace

    from pipeline_steps.data.search_data import DataSettings, SearchData

    cfg = {"method": {"darts_pt": {"proj_intv": 1, "criterion": "acc", "tune_lr": 0.01, "tune_lr_min": 0.001,
                                   "tune_schedule": {"nb201": "constant", "darts": "cosine"},
                                   "eval_batch_size": 8, "eval_images": None, "preset": "shared", "presets": {}}},
           "search": {"momentum": 0.9, "weight_decay": 3e-4, "batch_size": 16}}
    method = get_method("darts_pt")
    assert "eval_images" not in method.stage_settings(cfg, "nb201", "select")  # unset: the paper's stage key
    cfg["method"]["darts_pt"]["eval_images"] = 20
    s = method.stage_settings(cfg, "nb201", "select")
    assert s["eval_images"] == 20
    data = SearchData(DataSettings("cifar10", str(tiny_folder), source="folder"), batch_size=16, device="cpu")
    pool = data.images.batch(data.val_idx)[0]

    def scored_images(state) -> list[int]:
        seen = []
        run = SimpleNamespace(state=state, data=data, checkpoint=lambda: None,
                              timed=lambda fn, st, val, t, s: seen.append(torch.cat([x for x, _ in val])),
                              epoch=lambda mode, **kw: setattr(state, "epoch", state.epoch + 1))
        method.run_stage("select", run, s)
        images = torch.cat(seen)
        return [int(torch.nonzero((pool == x).flatten(1).all(1))[0]) for x in images]

    state = init_state(get_space("nb201", NB201), 10, Optimisation(epochs=1), seed=0, device="cpu")
    method.prepare_stage("select", state, s)
    state.extra["pt"]["tune_epochs"] = 1  # one decision is enough to see the images
    first = scored_images(state)
    assert len(first) == 20 == len(set(first)) and first != list(range(20))  # 20 distinct, drawn at random
    state.epoch = state.extra["pt"]["start_epoch"]  # a resumed stage: the same images again
    state.extra["pt"]["decisions"] = []
    assert scored_images(state) == first
