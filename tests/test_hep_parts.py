"""HEP-NAS building blocks: gradient-matching distances, children masks and states, the SMD loss and
its round-robin training, the one-hot alpha regulariser (the min-cut split and hierarchies are in
test_hep_partition.py)."""
from __future__ import annotations

import copy
import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from pipeline_steps.data.search_data import DataSettings, SearchData
from pipeline_steps.scores.gradient_matching import cosine_distances, gradient_matching_distances, op_gradients
from pipeline_steps.spaces import get_space
from pipeline_steps.spaces.nb201 import EDGE_KEYS
from pipeline_steps.supernet.state import Optimisation, SupernetState, init_state
from pipeline_steps.supernet.train import MODES, StepSettings, StepStats, train_epoch
from pipeline_steps.transforms import distill
from pipeline_steps.transforms.distill import SMDSettings, onehot_regulariser, smd_epoch, smd_loss
from pipeline_steps.transforms.partition import EdgeSplit, children_masks, spawn_child, spawn_children

pytestmark = pytest.mark.usefixtures("one_thread")

NB201 = {"channels": 4, "cells_per_stage": 1}
DARTS = {"op_set": "darts_no_none", "channels": 4, "layers": 3}


@pytest.fixture(scope="module")
def data(tiny_folder) -> SearchData:
    return SearchData(DataSettings("cifar10", str(tiny_folder), source="folder"), batch_size=32, device="cpu")


@pytest.fixture(scope="module")
def nb201_trained(data) -> SupernetState:
    """An NB201 supernet after one bilevel epoch: momentum buffers, Adam moments, a stepped scheduler."""
    state = init_state(get_space("nb201", NB201), 10, Optimisation(epochs=4), seed=0, device="cpu")
    train_epoch(state, data, "bilevel", progress=False)
    return state


@pytest.fixture
def nb201_parent(nb201_trained) -> SupernetState:
    return copy.deepcopy(nb201_trained)       # each test mutates its own copy


def sparse_darts_state() -> SupernetState:
    """A DARTS supernet with two ops alive per edge and four on normal edge 3 (the DARTS supernet is
    the slow one on a CPU; the masked ops also check that only alive ops are matched)."""
    state = init_state(get_space("darts", DARTS), 10, Optimisation(epochs=4), seed=0, device="cpu")
    ops = state.space.ops
    for m in state.mask.values():
        m[:] = False
        m[:, [ops.index("skip_connect"), ops.index("sep_conv_3x3")]] = True
    state.mask["normal"][3, [ops.index("max_pool_3x3"), ops.index("dil_conv_3x3")]] = True
    return state


def snapshot(state: SupernetState) -> dict:
    """Everything a step could change, as plain cloned values."""
    return copy.deepcopy({
        "model": state.model.state_dict(), "alpha": {k: a.detach() for k, a in state.alpha.items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in state.model.parameters()],
        "alpha_grads": [None if a.grad is None else a.grad.clone() for a in state.alpha.values()],
        "mask": state.mask, "w_opt": state.w_optimizer.state_dict(), "a_opt": state.a_optimizer.state_dict(),
        "sched": state.scheduler.state_dict(), "epoch": state.epoch, "training": state.model.training,
        "generator": state.generator.get_state()})


def assert_same(a, b) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0)     # recurses into dicts and lists; exact


# --------------------------------------------------------------------------- children


def test_children_masks_are_the_cartesian_product_of_the_edge_groups():
    parent = {"normal": torch.ones(14, 7, dtype=torch.bool), "reduce": torch.ones(14, 7, dtype=torch.bool)}
    parent["normal"][0, 5] = False          # dead outside the hierarchy: stays dead
    parent["normal"][3, 1] = False          # dead inside it: stays dead whatever group is kept
    parent["reduce"][7, 2] = False
    splits = [EdgeSplit("normal", 2, ((0, 6), (1, 2, 3, 4, 5)), 0.0),
              EdgeSplit("normal", 3, ((1, 4, 5), (0, 2, 3, 6)), 0.0),
              EdgeSplit("normal", 4, ((2, 3), (0, 1, 4, 5, 6)), 0.0)]
    children = children_masks(parent, splits)
    assert len(children) == 2 ** 3
    seen = set()
    for index, child in enumerate(children):
        assert torch.equal(child["reduce"], parent["reduce"])
        for e in range(14):
            if e not in (2, 3, 4):
                assert torch.equal(child["normal"][e], parent["normal"][e])
        kept = []
        for position, split in enumerate(splits):
            g = (index >> (len(splits) - 1 - position)) & 1       # itertools.product order: last edge fastest
            expected = torch.tensor([op in split.groups[g] for op in range(7)]) & parent["normal"][split.edge]
            assert torch.equal(child["normal"][split.edge], expected)
            kept.append(tuple(torch.nonzero(expected).flatten().tolist()))
        seen.add(tuple(kept))
    assert len(seen) == 8
    assert not parent["normal"][3, 1] and parent["normal"][2].all()         # the parent mask is untouched


def test_spawned_child_is_a_deep_copy_with_its_own_mask(nb201_parent):
    parent = nb201_parent
    before = snapshot(parent)
    mask = {"cell": parent.mask["cell"].clone()}
    mask["cell"][0, :2] = False
    child = spawn_child(parent, mask)
    assert torch.equal(child.mask["cell"], mask["cell"]) and parent.mask["cell"].all()
    after = snapshot(child)
    for key in ("model", "alpha", "w_opt", "a_opt", "sched", "epoch", "generator"):
        assert_same(after[key], before[key])
    assert len(child.w_optimizer.state) == len(parent.w_optimizer.state) > 0      # momentum inherited
    child_params = list(child.model.parameters())
    assert all(a is b for a, b in zip(child.w_optimizer.param_groups[0]["params"], child_params))
    assert child.a_optimizer.param_groups[0]["params"][0] is child.alpha["cell"]
    assert child.scheduler.optimizer is child.w_optimizer
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(child_params, parent.model.parameters()))
    assert child.generator is not parent.generator


def test_a_child_trains_independently_of_its_siblings_and_teacher(data, nb201_parent):
    parent = nb201_parent
    split = EdgeSplit("cell", 0, ((0, 1), (2, 3, 4)), 0.0)
    first, second = spawn_children(parent, [split], seed=0, level=1)
    assert first.active()["cell"][0] == [0, 1] and second.active()["cell"][0] == [2, 3, 4]
    teacher_before, sibling_before, first_before = snapshot(parent), snapshot(second), snapshot(first)
    settings = SMDSettings(guidance="both", teacher=parent, siblings=(second,))
    MODES["smd"](first, data, settings, StepStats(), StepStats(), [])
    assert_same(snapshot(second), sibling_before)
    assert_same(snapshot(parent), teacher_before)
    moved = snapshot(first)
    assert not torch.equal(moved["model"]["classifier.weight"], first_before["model"]["classifier.weight"])
    assert not torch.equal(moved["alpha"]["cell"], first_before["alpha"]["cell"])


# --------------------------------------------------------------------------- SMD loss and training


def softmax(row: list[float], t: float) -> list[float]:
    return [math.exp(v / t) / sum(math.exp(u / t) for u in row) for v in row]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("kd_direction", ["teacher_first", "student_first"])
@pytest.mark.parametrize("guidance", ["none", "previous", "siblings", "both"])
def test_smd_loss_equals_hand_computation(guidance, kd_direction, temperature):
    student = [[2.0, -1.0, 0.5], [0.1, 0.3, -2.0]]
    teacher = [[0.0, 1.5, -0.5], [1.0, -1.0, 0.0]]
    siblings = [[[1.0, 0.0, 3.0], [-0.5, 2.5, 0.5]], [[-2.0, 1.0, 0.0], [0.3, 0.3, 1.2]]]
    y = [0, 2]
    ce = sum(-math.log(softmax(z, 1.0)[c]) for z, c in zip(student, y)) / 2

    def dis(guide):        # batch mean of KL in the configured direction, times tau^2
        pairs = [(softmax(s, temperature), softmax(g, temperature)) for s, g in zip(student, guide)]
        kls = [kl(pg, ps) if kd_direction == "teacher_first" else kl(ps, pg) for ps, pg in pairs]
        return temperature ** 2 * sum(kls) / len(kls)

    expected = ce
    if guidance in ("previous", "both"):
        expected += dis(teacher)
    if guidance in ("siblings", "both"):
        expected += (dis(siblings[0]) + dis(siblings[1])) / 2
    got = smd_loss(torch.tensor(student), torch.tensor(y), torch.tensor(teacher), [torch.tensor(s) for s in siblings],
                   guidance=guidance, kd_direction=kd_direction, temperature=temperature)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_smd_without_guidance_is_the_plain_training_step(data, nb201_parent):
    parent = nb201_parent
    plain, unguided, guided = (spawn_child(parent, parent.mask) for _ in range(3))
    train_epoch(plain, data, "bilevel", progress=False)
    smd_epoch([unguided], parent, data, SMDSettings(guidance="none"), update_alpha=True)
    assert_same(snapshot(unguided)["model"], snapshot(plain)["model"])
    assert_same(snapshot(unguided)["alpha"], snapshot(plain)["alpha"])
    smd_epoch([guided], parent, data, SMDSettings(guidance="previous"), update_alpha=True)
    assert not torch.equal(guided.model.classifier.weight, plain.model.classifier.weight)


def test_smd_epoch_is_a_round_robin_over_current_siblings(data, nb201_parent, monkeypatch):
    parent = nb201_parent
    children = spawn_children(parent, [EdgeSplit("cell", 1, ((0, 4), (1, 2, 3)), 0.0)], seed=0, level=2)
    start = parent.epoch
    seen: list[tuple[int, int]] = []        # (guide asked for logits, its epoch counter then)
    real = distill.guide_logits

    def recording(guide, x, mixing="softmax"):
        seen.append((id(guide), guide.epoch))
        return real(guide, x, mixing)

    monkeypatch.setattr(distill, "guide_logits", recording)
    alpha_before = [c.alpha["cell"].detach().clone() for c in children]
    records = smd_epoch(children, parent, data, SMDSettings(guidance="siblings"), update_alpha=False)
    assert len(records) == 2 and [c.epoch for c in children] == [start + 1, start + 1]
    assert all(c.scheduler.last_epoch == parent.scheduler.last_epoch + 1 for c in children)
    steps = data.steps_per_epoch
    # child 0 first saw child 1 untrained, then child 1 saw child 0 already trained this round
    assert seen == [(id(children[1]), start)] * steps + [(id(children[0]), start + 1)] * steps
    for c, a in zip(children, alpha_before):           # alpha frozen in warm-up rounds
        assert torch.equal(c.alpha["cell"], a)


# --------------------------------------------------------------------------- gradient matching


def test_gradient_matching_is_symmetric_with_zero_diagonal_and_leaves_the_state_unchanged(data, nb201_parent):
    state = nb201_parent
    before = snapshot(state)
    global_rng = torch.get_rng_state()
    result = gradient_matching_distances(state, data, [("cell", 1), ("cell", 2)], torch.Generator().manual_seed(5),
                                         repeats=2, hard=True)
    assert [(r.cell_type, r.edge, r.ops) for r in result] == [("cell", e, (0, 1, 2, 3, 4)) for e in (1, 2)]
    for d in (r.distance for r in result):
        off = d[~torch.eye(5, dtype=torch.bool)]
        assert torch.equal(d, d.T) and torch.all(d.diagonal() == 0) and off.min() >= 0 and off.max() <= 2
        assert off.std() > 0
    assert_same(snapshot(state), before)
    assert torch.equal(torch.get_rng_state(), global_rng)


def names_of_shared_weights(state: SupernetState, cell_type: str, edge: int) -> list[str]:
    """W_s(e) by parameter name, independently of the implementation."""
    names = []
    for name, _ in state.model.named_parameters():
        if state.space.name == "nb201":
            if name.startswith("layers.") and f".edges.{EDGE_KEYS[edge]}." not in name:
                names.append(name)
        elif ".edges." in name:
            cell, _, rest = name.removeprefix("cells.").partition(".edges.")
            kind = "reduce" if state.model.cells[int(cell)].reduction else "normal"
            if not (kind == cell_type and int(rest.split(".")[0]) == edge):
                names.append(name)
    return names


@pytest.mark.parametrize("space_name,cell_type,edge,hard,repeats", [
    ("nb201", "cell", 4, True, 2), ("nb201", "cell", 4, False, 2), ("darts", "normal", 3, False, 1)])
def test_gradient_matching_equals_hand_computed_cosine_distance(data, nb201_parent, space_name, cell_type, edge, hard,
                                                                 repeats):
    state = nb201_parent if space_name == "nb201" else sparse_darts_state()
    (result,) = gradient_matching_distances(state, data, [(cell_type, edge)], torch.Generator().manual_seed(9),
                                            repeats=repeats, hard=hard)
    assert result.ops == tuple(torch.nonzero(state.mask[cell_type][edge]).flatten().tolist())
    model = copy.deepcopy(state.model).train()
    params = dict(model.named_parameters())
    shared = [params[n] for n in names_of_shared_weights(state, cell_type, edge)]
    assert len(shared) > 0
    theta = {k: w.detach() for k, w in state.weights().items()}
    generator = torch.Generator().manual_seed(9)
    expected = torch.zeros(len(result.ops), len(result.ops), dtype=torch.float64)
    for _ in range(repeats):
        x, y = data.random_train_batch(generator)
        vectors = []
        for op in result.ops:
            theta_o = {k: w.clone() for k, w in theta.items()}
            theta_o[cell_type][edge] = 0
            theta_o[cell_type][edge, op] = 1.0 if hard else theta[cell_type][edge, op]
            active = state.active()
            active[cell_type][edge] = [op]
            grads = torch.autograd.grad(F.cross_entropy(model(x, theta_o, active), y), shared, allow_unused=True)
            vectors.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten().double()
                                      for p, g in zip(shared, grads)]))
        for i, j in itertools.product(range(len(vectors)), repeat=2):
            gi, gj = vectors[i], vectors[j]
            expected[i, j] += (1 - gi.dot(gj) / (gi.norm() * gj.norm() + 1e-6)) / repeats
    expected.fill_diagonal_(0)
    torch.testing.assert_close(result.distance, expected, rtol=1e-5, atol=1e-6)


def test_raw_cosine_distance_of_an_op_with_itself_is_zero(data, nb201_parent):
    x, y = data.random_train_batch(torch.Generator().manual_seed(1))
    raw = cosine_distances(op_gradients(nb201_parent, x, y, "cell", 2, list(range(5)), hard=False))
    torch.testing.assert_close(raw.diagonal(), torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-4)
    torch.testing.assert_close(raw, raw.T)
    hard = cosine_distances(op_gradients(nb201_parent, x, y, "cell", 2, list(range(5)), hard=True))
    assert not torch.allclose(hard, raw)        # gm_hard changes what is matched


# --------------------------------------------------------------------------- the one-hot alpha regulariser


def test_onehot_regulariser_matches_the_codes_kl_div_form():
    theta = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.0, 0.5]])
    assert float(onehot_regulariser({"normal": theta})) == pytest.approx(-(math.log(0.7) + math.log(0.5)) / 6)
    gen = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(14, 7, generator=gen).softmax(-1) for k in ("normal", "reduce")}
    weights["normal"][3, 2] = 0.0
    weights["reduce"][5] = 0.0              # an edge with no alive op
    code = 0.0
    for w in weights.values():
        ranked = torch.sort(w, dim=-1, descending=True).values
        ranked = torch.where(ranked == 0, torch.tensor(1e-4), ranked)
        target = torch.zeros_like(ranked)
        target[:, 0] = 1
        with warnings.catch_warnings():          # torch warns that 'mean' is not 'batchmean': the code's choice
            warnings.simplefilter("ignore")
            code += float(F.kl_div(ranked.log(), target, reduction="mean"))
    assert float(onehot_regulariser(weights)) == pytest.approx(code, rel=1e-6)


def test_regularised_alpha_step_follows_the_regularised_loss(data):
    state = sparse_darts_state()
    reference = copy.deepcopy(state)
    captured = {}

    class Capture:
        def after_alpha_backward(self, s, weights):
            captured["alpha"] = [a.grad.clone() for a in s.alpha.values()]
            captured["theta"] = [w.grad is not None for w in weights.values()]

    generator = copy.deepcopy(state.generator)
    distill.onehot_regularised_alpha_step(state, data, StepSettings(), StepStats(), [Capture()])
    x, y = data.val_batch(generator)
    weights = reference.weights()
    loss = F.cross_entropy(reference.model.train()(x, weights, reference.active()), y)
    reg = sum(-w.max(dim=-1).values.log().mean() / w.shape[1] for w in weights.values())
    expected = torch.autograd.grad(loss + reg, list(reference.alpha.values()))
    torch.testing.assert_close(captured["alpha"], list(expected))
    assert captured["theta"] == [True, True]
    assert {"smd", "smd_fixed_alpha", "bilevel_onehot_reg"} <= MODES.keys()
