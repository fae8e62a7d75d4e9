"""HEP-NAS protocol (METHODS.md 2.3-2.4): `none` takes part in the min-cut with the 8-op DARTS set,
every sub-supernet reads its own batches from a generator seeded by (run seed, level, child
index), and a preset's batch size and op set reach the supernet every level reads."""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipeline_steps.common.errors import NasflowError
from pipeline_steps.data.search_data import SearchData
from pipeline_steps.methods import get_method, hep_nas
from pipeline_steps.pipeline.config import load_params
from pipeline_steps.pipeline.plan import Plan
from pipeline_steps.scores.gradient_matching import EdgeDistances
from pipeline_steps.spaces import get_space
from pipeline_steps.spaces.darts import DARTS_OPS
from pipeline_steps.supernet.state import Optimisation, SupernetState, init_state
from pipeline_steps.supernet.train import StepSettings
from pipeline_steps.transforms.distill import SMDSettings, smd_epoch
from pipeline_steps.transforms.partition import EdgeSplit, child_seed, min_cut_split, spawn_child, spawn_children

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
HEP = get_method("hep_nas")
NB201 = {"channels": 4, "cells_per_stage": 1}
DARTS8 = {"op_set": "darts", "channels": 4, "layers": 3}
NONE = DARTS_OPS.index("none")


# the tiny data and the trained NB201 parent of the HEP building-block tests
from test_hep_parts import data, nb201_parent, nb201_trained  # noqa: E402,F401


@pytest.fixture(scope="module")
def base_cfg() -> dict:
    """The params with HEP-NAS's batch size, `none` handling and preset supernet overrides at their
    defaults (paper preset, search.batch_size, the space's own op set)."""
    cfg = load_params(ROOT / "params", {"methods": ["hep_nas"], "spaces": ["nb201", "darts"],
                                        "tracking": {"enabled": False}, "device": "cpu"})
    section = cfg["method"]["hep_nas"]
    section.update(preset="paper", batch_size=None, keep_none_in_both_groups=False)
    for preset in section["presets"].values():
        for entry in preset.values():
            entry.pop("search", None)
            entry.pop("space", None)
    cfg["space"]["darts"]["op_set"] = "darts"
    return cfg


def fake_run(state: SupernetState, data: SearchData, out: Path, seed: int = 0):
    """What HEPNas.split_and_select and .partition read of a StageRun."""
    return SimpleNamespace(state=state, data=data, spec={"seed": seed}, key="test", resume=out / "resume.pt",
                           step_settings=StepSettings(), wall=0.0,
                           tracker=SimpleNamespace(log_metrics=lambda *a, **k: None),
                           timed=lambda fn, *a, **k: fn(*a, **k), checkpoint=lambda: None)


class FirstBatches:
    """Records the D_tr indices of the first training batch drawn through each generator."""

    def __init__(self, data: SearchData, monkeypatch):
        self.first: dict[int, torch.Tensor] = {}
        self.order: list[int] = []
        real_train, real_images = data.train_batch, data.images.batch
        last = {}

        def images_batch(idx, generator=None):
            last["idx"] = idx.clone().cpu()
            return real_images(idx, generator)

        def train_batch(source):
            x, y = real_train(source)
            key = id(source.generator) if isinstance(source, SupernetState) else id(source)
            if key not in self.first:
                self.first[key] = last["idx"]
                self.order.append(key)
            return x, y

        monkeypatch.setattr(data.images, "batch", images_batch)
        monkeypatch.setattr(data, "train_batch", train_batch)

    def of(self, state: SupernetState) -> torch.Tensor:
        return self.first[id(state.generator)]


# --------------------------------------------------------------------------- own batch streams


def test_child_seed_is_a_fixed_integer_mix_of_seed_level_and_index():
    assert child_seed(0, 1, 0) == 4964578127960768432          # pinned: the same in every process and version
    assert child_seed(0, 2, 2) == 5687487918430755205
    grid = {(s, k, m): child_seed(s, k, m) for s in range(4) for k in range(1, 6) for m in range(32)}
    assert len(set(grid.values())) == len(grid)                 # no two children of any run share a stream
    assert all(0 <= v < 2 ** 64 for v in grid.values())


def test_siblings_train_on_their_own_batches(data, nb201_parent, monkeypatch):
    children = spawn_children(nb201_parent, [EdgeSplit("cell", 1, ((0, 4), (1, 2, 3)), 0.0)], seed=0, level=1)
    batches = FirstBatches(data, monkeypatch)
    smd_epoch(children, nb201_parent, data, SMDSettings(guidance="previous"), update_alpha=False)
    first, second = batches.of(children[0]), batches.of(children[1])
    assert len(first) == len(second) == data.batch_size
    assert set(first.tolist()) != set(second.tolist())
    for m, child in enumerate(children):            # the stream is the seeded one, not the parent's copy
        expected = torch.Generator().manual_seed(child_seed(0, 1, m))
        assert not torch.equal(child.generator.get_state(), nb201_parent.generator.get_state())
        assert child.generator.initial_seed() == expected.initial_seed()


def test_children_streams_are_deterministic_and_leave_the_parent_alone(nb201_parent):
    twin = copy.deepcopy(nb201_parent)
    parent_rng = nb201_parent.generator.get_state()
    split = [EdgeSplit("cell", 2, ((0, 1), (2, 3, 4)), 0.0)]
    run_a = spawn_children(nb201_parent, split, seed=1, level=2)
    run_b = spawn_children(twin, split, seed=1, level=2)
    for a, b in zip(run_a, run_b):
        assert torch.equal(a.generator.get_state(), b.generator.get_state())
    assert not torch.equal(run_a[0].generator.get_state(), run_a[1].generator.get_state())
    other_level = spawn_children(nb201_parent, split, seed=1, level=3)
    other_seed = spawn_children(nb201_parent, split, seed=2, level=2)
    assert not torch.equal(other_level[0].generator.get_state(), run_a[0].generator.get_state())
    assert not torch.equal(other_seed[0].generator.get_state(), run_a[0].generator.get_state())
    assert torch.equal(nb201_parent.generator.get_state(), parent_rng)
    # a child's stream survives its checkpoint (the SMD resume point)
    restored = spawn_child(nb201_parent, run_a[1].mask)
    restored.load_state_dict(run_a[1].state_dict())
    assert torch.equal(restored.generator.get_state(), run_a[1].generator.get_state())
    # an unseeded copy is the exact parent (the teacher, and plain deep copies)
    assert torch.equal(spawn_child(nb201_parent, nb201_parent.mask).generator.get_state(), parent_rng)


def test_a_child_spawned_mid_pass_begins_its_own_pass(data, nb201_parent):
    if not hasattr(nb201_parent, "train_pass"):
        pytest.skip("training batches are independent draws: no pass to begin")
    data.train_batch(nb201_parent)                    # the parent is one batch into a pass
    split = [EdgeSplit("cell", 0, ((0, 1), (2, 3, 4)), 0.0)]
    first, second = spawn_children(nb201_parent, split, seed=0, level=1)
    _, y0 = data.train_batch(first)
    _, y1 = data.train_batch(second)
    assert first.train_pass.cursor == second.train_pass.cursor == data.batch_size
    assert not torch.equal(first.train_pass.order, second.train_pass.order)
    assert not torch.equal(first.train_pass.order, nb201_parent.train_pass.order)


def hep_level(cfg: dict, space: str, stage: str, **changes) -> dict:
    return {**HEP.stage_settings(cfg, space, stage), **changes}


def test_hep_level_seeds_each_child_from_run_seed_level_and_index(data, nb201_parent, base_cfg, tmp_path,
                                                                  monkeypatch):
    """split_and_select end to end on a tiny NB201 supernet, twice: every child trains on its own
    batches from its seeded stream, and a second run repeats the first exactly."""
    s = hep_level(base_cfg, "nb201", "h2", gm_repeats=1, smd_epochs=1, guidance="previous", continue_epochs=0,
                  alpha_warmup=0)
    spawned: list[list[torch.Tensor]] = []
    smd_start: list[int] = []
    real_smd = hep_nas.smd_epoch

    def recording_smd(children, *a, **k):             # one SMD epoch per run: the streams as spawned
        spawned.append([c.generator.get_state() for c in children])
        smd_start.append(len(batches.order))          # draws before it are the gradient matching's
        return real_smd(children, *a, **k)

    monkeypatch.setattr(hep_nas, "smd_epoch", recording_smd)
    finals = []
    for attempt in range(2):
        state = copy.deepcopy(nb201_parent)
        out = tmp_path / f"run{attempt}"
        out.mkdir()
        run = fake_run(state, data, out, seed=5)
        HEP.prepare_stage("h2", state, s)
        with monkeypatch.context() as m:
            batches = FirstBatches(data, m)
            HEP.split_and_select("h2", run, s)
        children_first = [batches.first[k] for k in batches.order[smd_start[-1]:]]
        n_children = 2 ** len(s["edges"])
        assert len(children_first) == n_children           # each child drew from its own generator
        assert len({tuple(sorted(b.tolist())) for b in children_first}) == n_children
        finals.append((children_first, state.state_dict()))
    assert len(spawned) == 2
    for states in spawned:
        for m, got in enumerate(states):
            assert torch.equal(got, torch.Generator().manual_seed(child_seed(5, s["level"], m)).get_state())
    (first_a, state_a), (first_b, state_b) = finals
    for a, b in zip(first_a, first_b):
        assert torch.equal(a, b)
    torch.testing.assert_close(state_a["model"], state_b["model"], rtol=0, atol=0)
    assert torch.equal(state_a["rng"]["generator"], state_b["rng"]["generator"])


# --------------------------------------------------------------------------- `none` in the partition


def planted(ops: tuple[int, ...], group: tuple[int, ...]) -> torch.Tensor:
    """Distances 0.1 inside `group` and inside the rest, 1 across (by op id)."""
    n = len(ops)
    d = torch.ones(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            if (ops[i] in group) == (ops[j] in group):
                d[i, j] = 0.1
    return d.fill_diagonal_(0.0)


def test_eight_op_min_cut_can_need_none_in_a_group():
    d = planted(tuple(range(8)), (NONE, 1, 2))
    (g, rest), _ = min_cut_split(d, "darts")
    assert g == (NONE, 1, 2) and rest == (3, 4, 5, 6, 7)


def test_none_is_never_left_alone_on_a_darts_edge(data, base_cfg, tmp_path, monkeypatch):
    """With a 3-op set (s3: none, skip, sep_conv_3x3) the darts rule splits 1 | 2; a group of
    `none` alone would leave a child an edge the parse cannot use, so the best other split wins."""
    d = planted((0, 1, 2), (0,))                             # {none} | {skip, sep} is the cheapest
    assert min_cut_split(d, "darts")[0] == ((0,), (1, 2))
    assert min_cut_split(d, "darts", not_alone={0})[0] == ((1,), (0, 2))
    with pytest.raises(NasflowError, match="alone"):
        min_cut_split(torch.ones(2, 2), "darts", ops=(0, 5), not_alone={0})
    state = init_state(get_space("darts", {**DARTS8, "op_set": "s3"}), 10, Optimisation(epochs=4), seed=0,
                       device="cpu")
    monkeypatch.setattr(hep_nas, "gradient_matching_distances", lambda st, _d, edges, _g, **_: [
        EdgeDistances(k, e, (0, 1, 2), planted((0, 1, 2), (0,))) for k, e in edges])
    parts = HEP.partition(fake_run(state, data, tmp_path), hep_level(base_cfg, "darts", "h1"))
    for p in parts:
        assert p["groups"] == [[1], [0, 2]] and p["group_ops"] == [["skip_connect"], ["none", "sep_conv_3x3"]]
    state.mask["normal"][0, 2] = False                     # {none, skip}: no admissible split, the edge stays whole
    parts = HEP.partition(fake_run(state, data, tmp_path), hep_level(base_cfg, "darts", "h1"))
    assert [(p["edge"], p["split"]) for p in parts] == [(1, True), (0, False)]


@pytest.fixture(scope="module")
def darts8_state() -> SupernetState:
    return init_state(get_space("darts", DARTS8), 10, Optimisation(epochs=4), seed=0, device="cpu")


def test_darts_partition_puts_none_in_exactly_one_group(darts8_state, data, base_cfg, tmp_path, monkeypatch):
    """With the 8-op set the min-cut sees `none`: a planted matrix whose best split is
    {none, max_pool, avg_pool} | the rest gives exactly those groups, and the children keep
    `none` on one side only."""
    state = copy.deepcopy(darts8_state)
    seen_ops = []

    def planted_matching(st, _data, edges, _generator, **_):
        out = []
        for kind, e in edges:
            ops = tuple(torch.nonzero(st.mask[kind][e]).flatten().tolist())
            seen_ops.append(ops)
            out.append(EdgeDistances(kind, e, ops, planted(ops, (NONE, 1, 2))))
        return out

    monkeypatch.setattr(hep_nas, "gradient_matching_distances", planted_matching)
    s = hep_level(base_cfg, "darts", "h1")
    assert s["keep_none_in_both_groups"] is False and s["edges"] == [["normal", 0], ["normal", 1]]
    parts = HEP.partition(fake_run(state, data, tmp_path), s)
    assert seen_ops == [tuple(range(8))] * 2
    for p in parts:
        assert p["split"] and "none" in p["ops"] and len(p["distance"]) == 8
        assert p["groups"] == [[NONE, 1, 2], [3, 4, 5, 6, 7]]
        assert p["group_ops"][0] == ["none", "max_pool_3x3", "avg_pool_3x3"]
    splits = [EdgeSplit(p["cell_type"], p["edge"], tuple(tuple(g) for g in p["groups"]), p["within_distance"])
              for p in parts]
    children = spawn_children(state, splits, seed=0, level=1)
    with_none = [[bool(c.mask["normal"][e, NONE]) for e in (0, 1)] for c in children]
    assert with_none == [[True, True], [True, False], [False, True], [False, False]]

    # the documented alternative: `none` left out of the matching and alive in both groups
    seen_ops.clear()
    kept = HEP.partition(fake_run(state, data, tmp_path), {**s, "keep_none_in_both_groups": True})
    assert seen_ops == [tuple(range(1, 8))] * 2
    for p in kept:
        assert all(NONE in g for g in p["groups"]) and "none" not in p["ops"]


def test_darts_partition_matches_gradients_of_all_eight_ops(darts8_state, data, base_cfg, tmp_path):
    """The real gradient matching on the first DARTS hierarchy: an 8x8 Dbar per edge, `none` included,
    and a split into two groups of 2..4 | 6..4 ops that together hold all eight."""
    state = copy.deepcopy(darts8_state)
    s = hep_level(base_cfg, "darts", "h1", gm_repeats=1)
    parts = HEP.partition(fake_run(state, data, tmp_path), s)
    for p in parts:
        d = torch.tensor(p["distance"])
        assert d.shape == (8, 8) and torch.isfinite(d).all() and p["ops"][NONE] == "none"
        assert d[NONE].sum() > 0                          # none's gradient is matched like the others'
        g, rest = p["groups"]
        assert 2 <= len(g) <= 4 and sorted(g + rest) == list(range(8))


# --------------------------------------------------------------------------- batch size and op set


def with_hep(cfg: dict, **section) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["method"]["hep_nas"].update(section)
    return cfg


def test_preset_search_and_space_overrides_reach_the_supernet(base_cfg):
    cfg = copy.deepcopy(base_cfg)
    presets = cfg["method"]["hep_nas"]["presets"]
    for name in ("paper", "code"):
        for space in ("nb201", "darts"):
            presets[name][space]["search"] = {"batch_size": 128}
    presets["code"]["darts"]["space"] = {"op_set": "darts_no_none"}
    plan = Plan(cfg)
    for name in ("paper", "code"):
        cfg["method"]["hep_nas"]["preset"] = name
        for space in ("nb201", "darts"):
            spec = plan.supernet_spec("hep_nas", space, "cifar10", 0)
            assert spec["search"]["batch_size"] == 128
            stage = plan.method_stage_spec("hep_nas", space, "cifar10", 0, "h1")
            assert stage["search"]["batch_size"] == 128               # SMD, continue and selection read it
            assert spec["search"]["epochs"] == HEP.schedule(cfg, space)["splits"][0]
        op_set = plan.supernet_spec("hep_nas", "darts", "cifar10", 0)["space_settings"]["op_set"]
        assert op_set == ("darts_no_none" if name == "code" else "darts")
    assert get_space("darts", HEP.space_settings(cfg, "darts")).ops == DARTS_OPS[1:]
    assert "search" not in HEP.stage_settings(cfg, "darts", "h1")


def test_method_batch_size_wins_and_defaults_change_nothing(base_cfg):
    plan = Plan(base_cfg)
    before = plan.supernet_spec("hep_nas", "nb201", "cifar10", 0)
    assert before["search"]["batch_size"] == base_cfg["search"]["batch_size"]
    assert HEP.supernet(base_cfg, "nb201")["search"].keys() == {"epochs", "lr_period"}   # spec keys as before
    assert HEP.supernet(base_cfg, "darts")["space"] == {}
    cfg = with_hep(base_cfg, batch_size=128)
    assert all(Plan(cfg).supernet_spec("hep_nas", sp, "cifar10", 0)["search"]["batch_size"] == 128
               for sp in ("nb201", "darts"))
    cfg["method"]["hep_nas"]["presets"]["paper"]["nb201"]["search"] = {"batch_size": 256}
    cfg["method"]["hep_nas"]["batch_size"] = {"nb201": 96, "darts": None}
    assert HEP.supernet(cfg, "nb201")["search"]["batch_size"] == 96          # method-level over the preset
    assert "batch_size" not in HEP.supernet(cfg, "darts")["search"]          # null: search.batch_size
    for bad in (0, 12.5, True):
        with pytest.raises(NasflowError, match="batch_size"):
            HEP.check(with_hep(base_cfg, batch_size=bad))
    with pytest.raises(NasflowError, match="keep_none_in_both_groups"):
        HEP.check(with_hep(base_cfg, keep_none_in_both_groups="yes"))
