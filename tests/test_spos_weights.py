"""Which weights each method measures P(a) with on the shared SPOS supernet: the SPOS baseline's
search uses the live weights (the model after its last step), SE-NAS's shrink scoring and search
use the snapshot average Wbar (Eq. 4), which the state keeps beside the live weights."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pipeline_steps.methods import get_method
from pipeline_steps.methods.se_nas import PROGRESS_KEY, named_table, search_model
from pipeline_steps.pipeline.config import load_params
from pipeline_steps.scores import child_eval
from pipeline_steps.spaces import get_space
from pipeline_steps.supernet import train
from pipeline_steps.supernet.state import Optimisation, init_state
from pipeline_steps.transforms import spos

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, K, VAL = 6, 3, 48
# two ops on every edge: 64 children, listed in full without a draw from the generator
ALIVE = torch.zeros(6, 5, dtype=torch.bool)
ALIVE[:, [2, 3]] = True


def toy_data() -> SimpleNamespace:
    """Random images for the SPOS steps and a fixed D_val of VAL images: what the stages read."""
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(VAL, 3, 8, 8, generator=gen)
    labels = torch.randint(10, (VAL,), generator=gen)

    def train_batch(state):
        g = state.generator
        return torch.randn(8, 3, 8, 8, generator=g), torch.randint(10, (8,), generator=g)
    return SimpleNamespace(steps_per_epoch=STEPS, train_batch=train_batch, val_idx=torch.arange(VAL),
                           images=SimpleNamespace(batch=lambda idx: (images[idx], labels[idx])))


def trained_run(method: str, stage: str) -> SimpleNamespace:
    """A tiny SPOS supernet after one epoch whose K snapshots are kept in the state, as the
    supernet stage leaves it, wrapped as the stage run the method's steps read."""
    space = get_space("nb201", {"channels": 4, "cells_per_stage": 1})
    state = init_state(space, 10, Optimisation(epochs=1, lr=0.3), seed=0, device="cpu")
    state.mask = {"cell": ALIVE.clone()}
    data = toy_data()
    train.train_epoch(state, data, "spos", hooks=[spos.KeptSnapshots(STEPS, K)], progress=False)
    assert state.extra[spos.SNAPSHOTS_KEY]["count"] == K
    get_method(method).prepare_stage(stage, state, {})
    return SimpleNamespace(state=state, data=data, bench=None, spec={"stage": stage})


def settings(method: str, stage: str, eval_bn: str) -> dict:
    cfg = load_params("params", {"tracking": {"enabled": False}, "device": "cpu"})
    s = get_method(method).stage_settings(cfg, "nb201", stage)
    return {**s, "scoring_images": VAL, "eval_bn": eval_bn, "si_archs": "exhaustive", "train_epochs": 0}


def reference(run, weights: str, eval_bn: str) -> dict[str, float]:
    """P(a) of every child with the given weights, on the D_val images the next measurement draws."""
    replay = torch.Generator()
    replay.set_state(run.state.generator.get_state())
    batches = child_eval.scoring_batches(run.data, replay, VAL, VAL)
    space = run.state.space
    model = run.state.model if weights == "live" else spos.averaged_copy(run.state.model, spos.kept_average(run.state))
    archs = list(child_eval.current_space(run.state.mask, space.cell_types))
    p = child_eval.evaluate_children(model, archs, batches, space.cell_types, len(space.ops), eval_bn,
                                     space.ops.index("none"))
    return named_table(space, p)


def test_the_state_keeps_live_and_averaged_weights_apart():
    run = trained_run("spos", "search")
    live = run.state.model.state_dict()
    averaged = spos.kept_average(run.state).mean()
    assert any(not torch.equal(live[n], averaged[n]) for n in live if live[n].is_floating_point())
    assert search_model(run.state, "live") is run.state.model
    twin = search_model(run.state, "averaged")
    assert all(torch.equal(v, averaged[n]) for n, v in twin.state_dict().items())
    with pytest.raises(ValueError, match="search weights"):
        search_model(run.state, "best")


@pytest.mark.parametrize("eval_bn", ["batch_stats", "eval"])
def test_spos_searches_with_the_live_weights_and_se_nas_with_the_average(eval_bn):
    s_spos, s_se = settings("spos", "search", eval_bn), settings("se_nas", "search", eval_bn)
    assert (s_spos["weights"], s_se["weights"]) == ("live", "averaged")

    run = trained_run("spos", "search")
    live, averaged = reference(run, "live", eval_bn), reference(run, "averaged", eval_bn)
    assert len(live) == 64 and live != averaged            # the two weight sets rank the children differently
    before = {n: t.clone() for n, t in run.state.model.state_dict().items()}
    decision, table = get_method("spos").final_search(run, s_spos)
    assert table == live and decision["weights"] == "live"
    assert decision["best_arch"] == max(live, key=live.get) and decision["p_best"] == max(live.values())
    # measuring left the live supernet as it was: weights, BN buffers and training flag
    assert all(torch.equal(t, before[n]) for n, t in run.state.model.state_dict().items())
    assert run.state.model.training

    run = trained_run("se_nas", "search")
    decision, table = get_method("se_nas").final_search(run, s_se)
    assert table == averaged and table != live and decision["weights"] == "averaged"


def test_se_nas_scores_operators_with_the_averaged_weights():
    run = trained_run("se_nas", "shrink1")
    s = settings("se_nas", "shrink1", "batch_stats")
    live, averaged = reference(run, "live", "batch_stats"), reference(run, "averaged", "batch_stats")
    assert live != averaged
    decision, table = get_method("se_nas").shrink_and_expand(run, s)
    assert table == averaged and run.state.extra[PROGRESS_KEY]["stage"] == "shrink1"
