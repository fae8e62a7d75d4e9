"""DARTS-PT input selection in the DARTS space (`method.darts_pt.topology`): the default one-pass
rule against a direct scoring of the unchanged network, the `iterative` rule against a direct
backward elimination, and the setting's validation."""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import pytest
import torch

from pipeline_steps.common.errors import NasflowError
from pipeline_steps.methods import get_method
from pipeline_steps.methods.darts_pt import TOPOLOGY_RULES, topology_nodes, topology_rule
from pipeline_steps.pipeline.config import load_params
from pipeline_steps.spaces import get_space
from pipeline_steps.spaces.darts import EDGE_NODE
from pipeline_steps.supernet.state import Optimisation, init_state
from pipeline_steps.supernet.train import evaluate

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"op_set": "darts_no_none", "channels": 2, "layers": 3, "stem_multiplier": 1}

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: thread start-up costs more than the work


def topology_ready(seed: int):
    """A tiny DARTS-space supernet whose every edge already has its op (one random op alive), as
    after DARTS-PT's op decisions, and one fixed validation batch."""
    state = init_state(get_space("darts", SPACE), 3, Optimisation(epochs=1), seed=seed, device="cpu")
    g = torch.Generator().manual_seed(seed + 5)
    with torch.no_grad():
        for a in state.alpha.values():
            a.copy_(0.7 * torch.randn(a.shape, generator=g))
    for m in state.mask.values():
        for e in range(m.shape[0]):
            op = int(torch.randint(m.shape[1], (1,), generator=g))
            m[e] = False
            m[e, op] = True
    g = torch.Generator().manual_seed(seed + 11)
    val = [(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g))]
    return state, val


@contextlib.contextmanager
def masks_as(state, masks: dict):
    """For the block, the state's masks of the cell types in `masks` are set to those values; on
    exit every mask is put back. The tensors are edited in place, as the method edits them."""
    saved = {k: m.clone() for k, m in state.mask.items()}
    for k, m in masks.items():
        state.mask[k].copy_(m)
    try:
        yield
    finally:
        for k, m in saved.items():
            state.mask[k].copy_(m)


def inputs(mask: dict, kind: str, node: int) -> list[int]:
    return [e for e in range(len(EDGE_NODE)) if EDGE_NODE[e] == node and bool(mask[kind][e].any())]


def removal_scores(state, val, kind: str, edges: list[int]) -> list[tuple[float, float]]:
    """(accuracy, loss) of the network as it is, with only row e of the mixing weights set to 0."""
    scores = []
    for e in edges:
        w = {k: v.detach().clone() for k, v in state.weights().items()}
        w[kind][e] = 0.0
        loss, acc = evaluate(state, val, w, state.active(), train_bn=True)
        scores.append((acc, loss))
    return scores


def hurt_order(scores, criterion: str) -> list[int]:
    """Most harmful removal first; the earlier input first on ties."""
    if criterion == "acc":
        return sorted(range(len(scores)), key=lambda i: (scores[i][0], i))
    return sorted(range(len(scores)), key=lambda i: (-scores[i][1], i))


def one_pass_reference(state, val, kind: str, node: int, criterion: str) -> list[int]:
    edges = inputs(state.mask, kind, node)
    scores = removal_scores(state, val, kind, edges)
    return sorted(edges[i] for i in hurt_order(scores, criterion)[:2])


def iterative_reference(state, val, kind: str, node: int, criterion: str) -> tuple[list[int], list[int]]:
    """(dropped in order, kept): drop the input whose removal hurts least (the last one on ties),
    mask it, score the others again."""
    with masks_as(state, {}):
        dropped = []
        while len(edges := inputs(state.mask, kind, node)) > 2:
            scores = removal_scores(state, val, kind, edges)
            crit = [acc if criterion == "acc" else -loss for acc, loss in scores]
            drop = edges[max(range(len(edges)), key=lambda i: (crit[i], i))]
            state.mask[kind][drop] = False
            dropped.append(drop)
        return dropped, inputs(state.mask, kind, node)


# (seed, cell type, node with 4 or 5 inputs) where the one-pass and the iterative rule keep
# different inputs under both criteria (test_the_cases_tell_the_two_rules_apart)
CASES = [(4, "normal", 5), (7, "normal", 4), (7, "reduce", 4)]


@pytest.mark.parametrize("criterion", ["acc", "loss"])
@pytest.mark.parametrize("seed,kind,node", CASES)
@pytest.mark.parametrize("settings", [{}, {"topology": "one_pass"}], ids=["default", "one_pass"])
def test_one_pass_keeps_the_two_inputs_whose_removal_hurts_most_on_the_unchanged_network(seed, kind, node,
                                                                                         criterion, settings):
    state, val = topology_ready(seed)
    before = {k: m.clone() for k, m in state.mask.items()}
    edges = inputs(before, kind, node)
    scores = removal_scores(state, val, kind, edges)
    expected = one_pass_reference(state, val, kind, node, criterion)

    d = get_method("darts_pt").decide_topology(state, val, kind, node,
                                               {"variant": "pt", "criterion": criterion, **settings})

    assert d["kept"] == expected
    assert d["dropped"] == [e for e in edges if e not in expected]
    # the table holds every input's score on the same network: nothing was masked between them
    assert [r["edge"] for r in d["table"]] == edges
    for row, (acc, loss) in zip(d["table"], scores):
        assert row["acc"] == pytest.approx(acc) and row["loss"] == pytest.approx(loss, rel=1e-5)
    # the dropped inputs are masked whole; every other row is as it was
    for k in state.mask:
        for e in range(len(EDGE_NODE)):
            if k == kind and e in d["dropped"]:
                assert not state.mask[k][e].any()
            else:
                assert torch.equal(state.mask[k][e], before[k][e])


@pytest.mark.parametrize("seed,kind,node", CASES)
def test_the_cases_tell_the_two_rules_apart(seed, kind, node):
    state, val = topology_ready(seed)
    for criterion in ("acc", "loss"):
        _, kept = iterative_reference(state, val, kind, node, criterion)
        assert kept != one_pass_reference(state, val, kind, node, criterion)


@pytest.mark.parametrize("criterion", ["acc", "loss"])
@pytest.mark.parametrize("seed,kind,node", CASES)
def test_iterative_masks_each_dropped_input_before_scoring_the_rest(seed, kind, node, criterion):
    state, val = topology_ready(seed)
    dropped, kept = iterative_reference(state, val, kind, node, criterion)

    d = get_method("darts_pt").decide_topology(state, val, kind, node,
                                               {"variant": "pt", "criterion": criterion, "topology": "iterative"})

    assert d["kept"] == kept
    assert [r["dropped"] for r in d["rounds"]] == dropped
    assert [len(r["table"]) for r in d["rounds"]] == list(range(len(dropped) + 2, 2, -1))
    assert inputs(state.mask, kind, node) == kept


def test_decide_uses_the_one_pass_rule_by_default():
    state, val = topology_ready(4)
    method = get_method("darts_pt")
    state.extra["pt"] = {"decisions": []}
    s = {"variant": "pt", "criterion": "acc"}
    t = 0
    while any(topology_nodes(state, k) for k in state.mask):
        replay = {k: m.clone() for k, m in state.mask.items()}  # the network each decision saw
        method.decide(state, val, t, s)
        for d in (d for d in state.extra["pt"]["decisions"] if d["epoch"] == t):
            with masks_as(state, replay):
                expected = one_pass_reference(state, val, d["cell_type"], d["node"], "acc")
            assert d["kept"] == expected and d["rule"] == "one_pass"
            replay = {**replay, d["cell_type"]: state.mask[d["cell_type"]].clone()}
        t += 1
    assert t == 3
    for kind in state.mask:
        assert all(len(inputs(state.mask, kind, n)) == 2 for n in set(EDGE_NODE))


@pytest.mark.parametrize("rule", TOPOLOGY_RULES)
def test_mag_keeps_the_two_inputs_with_the_largest_weight(rule):
    state, _ = topology_ready(2)
    theta = torch.softmax(state.alpha["normal"].detach(), dim=-1)
    strength = {e: float((theta[e] * state.mask["normal"][e]).max()) for e in range(len(EDGE_NODE))}
    edges = inputs(state.mask, "normal", 5)
    expected = sorted(sorted(edges, key=lambda e: (-strength[e], e))[:2])
    d = get_method("darts_pt_mag").decide_topology(state, None, "normal", 5,
                                                   {"variant": "mag", "criterion": "acc", "topology": rule})
    assert d["kept"] == expected == inputs(state.mask, "normal", 5)


# --------------------------------------------------------------------------- the setting


@pytest.mark.parametrize("bad", ["greedy", "One_Pass", None, 2])
def test_bad_topology_value_names_it_and_the_valid_ones(bad):
    with pytest.raises(NasflowError) as err:
        topology_rule({"topology": bad})
    msg = str(err.value)
    assert "method.darts_pt.topology" in msg and repr(bad) in msg
    assert "one_pass" in msg and "iterative" in msg and "\n" not in msg


def test_check_hook_and_decision_reject_a_bad_topology():
    cfg = load_params(ROOT / "params")
    for name in ("darts_pt", "darts_pt_fix_alpha", "darts_pt_mag"):
        get_method(name).check(cfg)  # absent: the default
    for rule in TOPOLOGY_RULES:
        ok = copy.deepcopy(cfg)
        ok["method"]["darts_pt"]["topology"] = rule
        get_method("darts_pt").check(ok)
    bad = copy.deepcopy(cfg)
    bad["method"]["darts_pt"]["topology"] = "greedy"
    for name in ("darts_pt", "darts_pt_fix_alpha", "darts_pt_mag"):
        with pytest.raises(NasflowError, match="greedy"):
            get_method(name).check(bad)
    with pytest.raises(NasflowError, match="greedy"):
        get_method("darts_pt").stage_settings(bad, "darts", "select")

    state, val = topology_ready(4)
    before = {k: m.clone() for k, m in state.mask.items()}
    with pytest.raises(NasflowError, match="greedy"):
        get_method("darts_pt").decide_topology(state, val, "normal", 4,
                                               {"variant": "pt", "criterion": "acc", "topology": "greedy"})
    assert all(torch.equal(state.mask[k], before[k]) for k in before)


def test_stage_settings_carry_the_rule_on_the_darts_space_only():
    cfg = load_params(ROOT / "params")
    method = get_method("darts_pt")
    assert method.stage_settings(cfg, "darts", "select")["topology"] == "one_pass"
    assert "topology" not in method.stage_settings(cfg, "nb201", "select")  # no topology step there
    cfg["method"]["darts_pt"]["topology"] = "iterative"
    assert method.stage_settings(cfg, "darts", "select")["topology"] == "iterative"
