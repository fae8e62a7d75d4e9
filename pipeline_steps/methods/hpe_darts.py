"""HPE-DARTS (hybrid pruning with the NetPerfProxy, METHODS.md 4): soft then hard pruning of ops.

  1. supernet  Warm-up: E_warmup epochs training w with alpha fixed at 1/|O| (`alpha_init`), on
               the first part of one cosine LR curve over warm-up + all pruning epochs; ops
               mixed by the raw alpha (`mixing = raw_alpha`, the SP-DARTS code) or by softmax(alpha).
               Its own supernet job: the settings differ from the DARTS one.
  2. prune1 .. pruneS  with S = len(schedule) - 1 and Pop_st = kept[st-1] - kept[st]
               ("ops kept" schedules [5, 3, 1] on NB201, [8, 5, 3, 1] in the DARTS space). Each
               stage is E_prune epochs; at the start of epoch i = 0 .. E_prune-1:
                 importance  I(e, o) of every alive op on every edge, per cell type:
                               acc   I_acc = Acc(full) - Acc(without (e, o)) on the first
                                     `acc_val_fraction` of D_val, a random subset drawn
                                     each time (train-mode BN, no grad)
                               npp   I_npp = NPP(full) - NPP(without (e, o)) on `npp_batch`
                                     D_tr images (the alpha-weighted NASWOT kernel)
                             NB201: acc in the first half of the stages, npp after (`acc_then_npp`);
                             DARTS space: npp everywhere. `hpe_darts_naswot` scores with plain
                             NASWOT wherever npp would be used (the paper's ablation).
                 soft decay  alpha[e, o] *= 1 - i / E_prune for the k_soft least important alive
                             ops per edge (k_soft = Pop_st by default), then one epoch of bi-level
                             DARTS; Adam keeps training alpha, so a decayed op can recover.
               At the end of the stage, the importance is measured again (`hard_criterion`, npp)
               and the Pop_st least important alive ops of every edge are removed for good.
  3. derive    NB201: the one op left per edge. DARTS space: per node the two inputs whose
               surviving non-`none` op has the largest alpha (an edge left with `none` is
               ineligible), as the DARTS parse does on the pruned mask.

Every decision (importance matrices, decayed ops with alpha before and after, hard-pruned ops) is
in the stage's decisions.json; each epoch's history record holds its importance matrix.
"""
from __future__ import annotations

import dataclasses
import math
import sys

import torch

from ..common.errors import NasflowError
from ..common.progress import loop
from ..scores.netperf import naswot_drop, netperf_drop, proxy_batch
from ..scores.perturbation import without
from ..spaces import Space, get_space
from ..supernet.state import SupernetState, mixing_weights
from ..supernet.train import evaluate
from ..transforms.pruning import hard_prune, pops_per_stage, soft_decay, validate_schedule
from .base import Method

STAGE_PREFIX = "prune"
SUPERNET_MIXING = {"raw_alpha": "raw", "softmax": "softmax"}   # hpe.mixing -> the supernet's mixing


class HPEDarts(Method):
    params_key = "hpe_darts"

    def __init__(self, name: str, proxy: str = "npp"):
        super().__init__(name)
        assert proxy in ("npp", "naswot")
        self.proxy = proxy          # what `npp` in the criteria means for this variant

    # ----------------------------------------------------------------- checks before anything runs
    def check(self, cfg: dict) -> None:
        """Every configured space's schedule must prune its supernet's alive ops down to one per edge."""
        p = self.params(cfg)
        for space in cfg["spaces"]:
            settings = {**cfg["space"][space], **self.preset(cfg, space).get("space", {})}
            try:
                validate_schedule(p["schedule"][space], get_space(space, settings).initial_mask())
            except NasflowError as e:
                raise NasflowError(f"method.{self.params_key}.schedule.{space}: {e}") from None
        if p["decay_denominator"] == "E_prune_minus_one" and p["prune_epochs"] < 2:
            raise NasflowError(f"method.{self.params_key}.decay_denominator E_prune_minus_one needs prune_epochs >= 2")

    # ----------------------------------------------------------------- supernet = warm-up
    def supernet(self, cfg: dict, space: str) -> dict:
        """The warm-up anneals on the one cosine of the whole search (warm-up + every pruning
        epoch), so the pruning stages continue its curve (`lr_period`)."""
        p = self.params(cfg)
        n_stages = len(p["schedule"][space]) - 1
        return {"mode": "fixed_alpha", "space": {}, "alpha_warmup": 0,
                "search": {"epochs": p["warmup_epochs"], "alpha_init": p["alpha_init"],
                           "mixing": SUPERNET_MIXING[p["mixing"]],
                           "lr_period": p["warmup_epochs"] + n_stages * p["prune_epochs"]}}

    # ----------------------------------------------------------------- pruning stages
    def stages(self, cfg: dict, space: str) -> list[str]:
        return [f"{STAGE_PREFIX}{st}" for st in range(1, len(self.params(cfg)["schedule"][space]))]

    def stage_settings(self, cfg: dict, space: str, stage: str) -> dict:
        p = self.params(cfg)
        kept = validate_schedule(p["schedule"][space])
        n_stages, st = len(kept) - 1, int(stage[len(STAGE_PREFIX):])
        search = {**cfg["search"], **self.supernet(cfg, space)["search"]}
        return {"stage_index": st, "stages": n_stages, "kept_before": kept[st - 1], "kept_after": kept[st],
                "pop": pops_per_stage(kept)[st - 1], "prune_epochs": p["prune_epochs"],
                "soft_criterion": self.soft_criterion(p["soft_criterion"][space], st, n_stages),
                "hard_criterion": self.criterion(p["hard_criterion"]),
                "k_soft": p["k_soft"], "decay_denominator": p["decay_denominator"], "mixing": p["mixing"],
                "npp_form": p["npp_form"], "npp_code_source": p["npp_code_source"], "npp_batch": p["npp_batch"],
                "acc_val_fraction": p["acc_val_fraction"],
                "eval_batch_size": p["eval_batch_size"] or search["batch_size"],
                # one cosine LR schedule over warm-up + all pruning epochs (the SP-DARTS code)
                "lr": search["lr"], "lr_min": search["lr_min"],
                "total_epochs": p["warmup_epochs"] + n_stages * p["prune_epochs"]}

    def soft_criterion(self, rule: str, st: int, n_stages: int) -> str:
        """`acc_then_npp`: acc in stages 1 .. S // 2, npp in the rest (S = 2: acc then npp)."""
        if rule == "acc_then_npp":
            return "acc" if st <= n_stages // 2 else self.proxy
        return self.criterion(rule)

    def criterion(self, name: str) -> str:
        return self.proxy if name == "npp" else name

    def prepare_stage(self, stage: str, state: SupernetState, s: dict) -> None:
        """Fresh progress for this stage; the w LR continues one cosine over the whole search."""
        state.extra["hpe"] = {"stage": stage, "start_epoch": state.epoch, "decisions": [], "hard_pruned": False}
        total = max(s["total_epochs"], state.epoch + s["prune_epochs"])
        for group in state.w_optimizer.param_groups:
            group["lr"] = group["initial_lr"] = s["lr"]
        state.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(state.w_optimizer, T_max=total, eta_min=s["lr_min"])
        state.scheduler.last_epoch = state.epoch
        for group in state.w_optimizer.param_groups:
            group["lr"] = s["lr_min"] + (s["lr"] - s["lr_min"]) * (1 + math.cos(math.pi * state.epoch / total)) / 2

    def run_stage(self, stage: str, run, s: dict) -> dict:
        state, hpe = run.state, run.state.extra["hpe"]
        run.step_settings = dataclasses.replace(run.step_settings, mixing=SUPERNET_MIXING[s["mixing"]])
        k_soft = s["pop"] if s["k_soft"] == "pop_of_stage" else s["k_soft"]
        while (i := state.epoch - hpe["start_epoch"]) < s["prune_epochs"]:
            # a kill before this epoch's checkpoint redoes the decay from the same RNG state
            importance = run.timed(self.importance, run, s["soft_criterion"], s)
            decay = run.timed(self.soft_decay, state, importance, k_soft, i, s)
            decision = {"type": "soft_decay", "stage": stage, "epoch": state.epoch, "criterion": s["soft_criterion"],
                        "importance": jsonable(importance), **decay}
            hpe["decisions"].append(decision)
            print(f"{stage} soft decay at epoch {i}: {decay['decayed']}", file=sys.stderr, flush=True)
            run.epoch("bilevel", epoch_in_stage=i, importance=decision["importance"],
                      criterion=s["soft_criterion"], decayed=decay["decayed"])
        if not hpe["hard_pruned"]:
            importance = run.timed(self.importance, run, s["hard_criterion"], s)
            pruned = hard_prune(state.mask, importance, s["pop"]).to_dict()
            decision = {"type": "hard_prune", "stage": stage, "epoch": state.epoch, "criterion": s["hard_criterion"],
                        **pruned}
            hpe["decisions"].append(decision)
            hpe["hard_pruned"] = True
            # the stage's last record describes the state it hands on: the mask after the hard prune
            record = state.history[-1]
            record.update(mask={k: m.tolist() for k, m in state.mask.items()}, hard_pruned=pruned["removed"],
                          arch=str(state.space.derive(state.weights(run.step_settings.mixing), state.mask, True)))
            print(f"{stage} hard prune ({s['hard_criterion']}): {pruned['removed']}", file=sys.stderr, flush=True)
            run.checkpoint()
        return {"decisions.json": hpe["decisions"]}

    # ----------------------------------------------------------------- importance and decay
    def importance(self, run, criterion: str, s: dict) -> dict[str, torch.Tensor]:
        """I(e, o) per cell type, shaped like alpha, NaN on dead ops; larger means more important."""
        state, mixing = run.state, SUPERNET_MIXING[s["mixing"]]
        if criterion == "acc":
            # a random `acc_val_fraction` of D_val, drawn anew for each importance (SP-DARTS's
            # infer_test_portion); every op of one importance is measured on the same images
            limit = max(1, round(s["acc_val_fraction"] * len(run.data.val_idx)))
            batches = list(run.data.val_batches(s["eval_batch_size"], limit, generator=state.generator))
            return accuracy_drop(state, batches, mixing)
        x = proxy_batch(run.data, state.generator, s["npp_batch"])
        if criterion == "naswot":
            return naswot_drop(state, x, mixing=mixing)
        return netperf_drop(state, x, mixing=mixing, form=s["npp_form"], code_source=s["npp_code_source"])

    @staticmethod
    def soft_decay(state: SupernetState, importance, k_soft, i: int, s: dict) -> dict:
        """Eq. 7 on the mixing weights: raw alpha in place; under softmax, theta is scaled by
        shifting its logit by log(factor), which the softmax then renormalises."""
        args = (importance, state.mask, k_soft, i, s["prune_epochs"], s["decay_denominator"])
        if s["mixing"] == "raw_alpha":
            return soft_decay(state.alpha, *args).to_dict()
        theta = {k: a.detach().exp() for k, a in state.alpha.items()}
        record = soft_decay(theta, *args)
        with torch.no_grad():
            for k, a in state.alpha.items():
                a.copy_(theta[k].clamp_min(1e-30).log())
        return {**record.to_dict(), "decayed_quantity": "exp(alpha)"}

    # ----------------------------------------------------------------- derive
    def derive_settings(self, cfg: dict, space: str) -> dict:
        p = self.params(cfg)
        return {"allow_none": p["allow_none_in_derive"], "mixing": SUPERNET_MIXING[p["mixing"]]}

    def derive(self, space: Space, record: dict, settings: dict):
        """On the record's mask, the alive op with the largest mixing weight per edge (after the
        last hard prune: the only one); DARTS space: the DARTS parse picks two inputs per node."""
        mask = {k: torch.as_tensor(m, dtype=torch.bool) for k, m in record["mask"].items()}
        weights = {k: mixing_weights(torch.as_tensor(a), mask[k], settings.get("mixing", "raw"))
                   for k, a in record["alpha"].items()}
        return space.derive(weights, mask, settings["allow_none"])


@torch.no_grad()
def accuracy_drop(state: SupernetState, batches, mixing: str) -> dict[str, torch.Tensor]:
    """I_acc(e, o) = Acc(full) - Acc(with (e, o) removed in every cell of its type); `none` is 0
    (removing it changes nothing), dead ops NaN."""
    weights, active = state.weights(mixing), state.active()
    _, full = evaluate(state, batches, weights, active, train_bn=True)
    drop = {k: torch.full(tuple(m.shape), math.nan, dtype=torch.float64) for k, m in state.mask.items()}
    alive = [(kind, e, o) for kind, edges in active.items() for e, ops in enumerate(edges) for o in ops]
    for kind, e, o in loop(alive, "accuracy drops, ops"):
        if state.space.ops[o] == "none":
            drop[kind][e, o] = 0.0
            continue
        _, acc = evaluate(state, batches, *without(weights, active, kind, e, o), train_bn=True)
        drop[kind][e, o] = full - acc
    return drop


def jsonable(importance: dict[str, torch.Tensor]) -> dict[str, list]:
    """Importance matrices for JSON, NaN (a dead op) as null."""
    return {k: [[None if math.isnan(v) else v for v in row] for row in t.tolist()] for k, t in importance.items()}
