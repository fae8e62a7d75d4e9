"""Each method's resolved paper-profile protocol against METHODS.md (a drift in params/ fails here),
and HPE-DARTS's warm-up and pruning learning rates as one cosine curve."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from pipeline_steps.methods import get_method
from pipeline_steps.pipeline.config import load_params
from pipeline_steps.pipeline.plan import Plan
from pipeline_steps.pipeline.protocol import protocol_rows

NB201_OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
OSTR_OPS = ["none", "avg_pool_3x3", "nor_conv_3x3", "nor_conv_1x1", "skip_connect"]
DARTS_8 = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
           "dil_conv_5x5"]
DARTS_7 = DARTS_8[1:]
DARTS_W = "SGD lr 0.025 momentum 0.9 wd 0.0003, clip 5.0"
DARTS_A = "Adam lr 0.0003 betas (0.5, 0.999) wd 0.001"

# (method, space): the supernet stage as METHODS.md states it (1.4, 2.4, 3.4, 4.4, 5.4, 6.4)
SUPERNET = {
    ("darts", "nb201"): dict(mode="bilevel", epochs=50, batch_size=64, lr_period=50, w_optimiser=DARTS_W,
                             alpha_optimiser=DARTS_A, ops=NB201_OPS),
    ("darts_pt", "nb201"): dict(mode="bilevel", epochs=100, batch_size=64, lr_period=100, w_optimiser=DARTS_W,
                                alpha_optimiser=DARTS_A, ops=NB201_OPS),
    ("darts_pt", "darts"): dict(mode="bilevel", epochs=50, batch_size=64, lr_period=50, ops=DARTS_7),
    ("darts_pt_fix_alpha", "nb201"): dict(mode="fixed_alpha", epochs=100, batch_size=64, alpha_optimiser="frozen"),
    ("ostr", "nb201"): dict(mode="bilevel", epochs=50, batch_size=512, lr_period=50, ops=OSTR_OPS,
                            w_optimiser="SGD lr 0.1 momentum 0.9 wd 0.0003, clip 5.0",
                            alpha_optimiser="Adam lr 0.0003 betas (0.9, 0.999) wd 0.001"),
    ("hpe_darts", "nb201"): dict(mode="fixed_alpha", epochs=5, batch_size=64, lr_period=15, alpha_optimiser="frozen",
                                 alpha_init="uniform", mixing="raw", ops=NB201_OPS, w_optimiser=DARTS_W),
    ("hpe_darts", "darts"): dict(mode="fixed_alpha", epochs=5, batch_size=64, lr_period=20, ops=DARTS_8),
    ("se_nas", "nb201"): dict(mode="spos", epochs=20, batch_size=256, lr_period=20,
                              w_optimiser="SGD lr 0.025 momentum 0.9 wd 0.0005 nesterov, clip 5.0"),
    ("spos", "nb201"): dict(mode="spos", epochs=20, batch_size=256),
    ("hep_nas", "nb201"): dict(epochs=10, batch_size=128, lr_period=30, ops=NB201_OPS,
                               alpha_optimiser=DARTS_A + ", frozen for the first 10 epochs"),
    ("hep_nas", "darts"): dict(epochs=15, batch_size=128, lr_period=45, ops=DARTS_8),
}
# (method, space, stage): settings of a method's own stages
STAGES = {
    ("darts_pt", "nb201", "select"): dict(proj_intv=5, tune_lr=0.0025, tune_schedule="constant", criterion="acc"),
    ("darts_pt", "darts", "select"): dict(proj_intv=5, tune_lr=0.0025, tune_schedule="cosine", topology="one_pass"),
    ("hpe_darts", "nb201", "prune1"): dict(prune_epochs=5, kept_before=5, kept_after=3, soft_criterion="acc",
                                           hard_criterion="npp", total_epochs=15, acc_val_fraction=0.5),
    ("hpe_darts", "nb201", "prune2"): dict(prune_epochs=5, kept_before=3, kept_after=1, soft_criterion="npp"),
    ("hpe_darts", "darts", "prune3"): dict(prune_epochs=5, kept_before=3, kept_after=1, total_epochs=20),
    ("se_nas", "nb201", "shrink1"): dict(k=10, T=50, snapshots=10, train_epochs=20),
    ("se_nas", "nb201", "search"): dict(weights="averaged", scoring_images=512),
    ("spos", "nb201", "search"): dict(weights="live"),
    ("hep_nas", "nb201", "h1"): dict(smd_epochs=10, gm_repeats=100, gm_hard=True, kd_direction="teacher_first"),
    ("hep_nas", "nb201", "h3"): dict(smd_epochs=10, continue_epochs=0),
    ("hep_nas", "darts", "h1"): dict(smd_epochs=5, gm_hard=False),
    ("hep_nas", "darts", "h2"): dict(smd_epochs=4),
}


@pytest.fixture(scope="module")
def paper_rows():
    cfg = load_params("params", {"profile": "paper", "spaces": ["nb201", "darts"]})
    return {(r["method"], r["space"], r["stage"]): r for r in protocol_rows(cfg)}


@pytest.mark.parametrize("key", list(SUPERNET), ids=lambda k: f"{k[0]}-{k[1]}")
def test_supernet_protocol(paper_rows, key):
    row = paper_rows[(*key, "supernet")]
    for field, expected in SUPERNET[key].items():
        assert row[field] == expected, f"{key} {field}"
    assert row["data"]["train_portion"] == 0.5 and row["data"]["max_images"] is None
    assert row["data"]["image_size"] is None


@pytest.mark.parametrize("key", list(STAGES), ids=lambda k: "-".join(k))
def test_stage_protocol(paper_rows, key):
    settings = paper_rows[key]["settings"]
    for field, expected in STAGES[key].items():
        assert settings[field] == expected, f"{key} {field}"


def test_every_stage_of_every_method_is_listed(paper_rows):
    cfg = load_params("params", {"profile": "paper", "spaces": ["nb201", "darts"]})
    for method in ("darts_pt", "hpe_darts", "se_nas", "hep_nas"):
        for space in ("nb201", "darts"):
            for stage in get_method(method).stages(cfg, space):
                assert (method, space, stage) in paper_rows


def test_hep_code_preset_uses_seven_ops_and_batch_128():
    cfg = load_params("params", {"profile": "paper", "spaces": ["nb201", "darts"],
                                 "method": {"hep_nas": {"preset": "code"}}})
    rows = {(r["method"], r["space"], r["stage"]): r for r in protocol_rows(cfg, methods=["hep_nas"])}
    assert rows[("hep_nas", "darts", "supernet")]["ops"] == DARTS_7
    assert rows[("hep_nas", "nb201", "supernet")]["batch_size"] == 128
    assert rows[("hep_nas", "darts", "supernet")]["batch_size"] == 128


def test_protocol_command_prints_and_takes_overrides():
    r = subprocess.run([sys.executable, "-m", "pipeline_steps", "protocol", "--profile", "paper", "--methods", "ostr",
                        "--config", "method.ostr.preset=beta_darts"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ostr on nb201" in r.stdout and "batch 64" in r.stdout and "SGD lr 0.025" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "pipeline_steps", "protocol", "--config", "seeds"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr


def test_hpe_warmup_and_pruning_learning_rates_form_one_cosine(tiny_folder):
    """The LR of every epoch, warm-up (the supernet stage) then the pruning stages, is the closed-form
    cosine over warm-up + all pruning epochs: no restart when pruning begins."""
    from pipeline_steps.spaces import get_space
    from pipeline_steps.pipeline.stage_run import optimisation
    from pipeline_steps.supernet.state import init_state

    cfg = load_params("params", {"profile": "paper", "spaces": ["nb201"], "methods": ["hpe_darts"]})
    plan = Plan(cfg)
    spec = plan.supernet_spec("hpe_darts", "nb201", "cifar10", 0)
    space = get_space("nb201", {**spec["space_settings"], "channels": 2, "cells_per_stage": 1})
    state = init_state(space, 10, optimisation(spec["search"]), 0, "cpu")
    lrs = []
    for _ in range(spec["search"]["epochs"]):  # the warm-up's own scheduler
        lrs.append(state.w_optimizer.param_groups[0]["lr"])
        state.w_optimizer.step()
        state.scheduler.step()
        state.epoch += 1
    method = get_method("hpe_darts")
    for stage in method.stages(cfg, "nb201"):
        s = plan.method_stage_spec("hpe_darts", "nb201", "cifar10", 0, stage)["settings"]
        method.prepare_stage(stage, state, s)
        for _ in range(s["prune_epochs"]):
            lrs.append(state.w_optimizer.param_groups[0]["lr"])
            state.w_optimizer.step()
            state.scheduler.step()
            state.epoch += 1
    total = 15
    expected = [0.001 + (0.025 - 0.001) * (1 + math.cos(math.pi * e / total)) / 2 for e in range(total)]
    assert len(lrs) == total
    torch.testing.assert_close(torch.tensor(lrs), torch.tensor(expected), rtol=1e-9, atol=1e-12)
