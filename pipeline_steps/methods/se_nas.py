"""SE-NAS (Hu et al., Pattern Recognition 2021; METHODS.md 3), and the plain SPOS baseline.

Algorithm 1 as the stages run it:

  1. supernet  SPOS: E epochs, one uniformly sampled alive path per step (`sampling` per_arch or
               per_cell, nodes whose inputs all drew `none` redrawn); during the last epoch K
               snapshots of every weight and BN buffer, averaged into Wbar (Eq. 4).
  2. shrink1 .. shrinkS, each:
       P(a)    validation accuracy of child a with Wbar on one fixed D_val batch
               (`scoring_images`, BN `eval_bn`), for the children of the current space: every
               one on NB201 (`si_archs`: exhaustive, or at most that many drawn uniformly),
               `models_per_op` drawn per operator in the DARTS space.
       score   SI_o = mean P(a) over the children containing o; SC_o = variance of SI on o's edge;
               S_o = (SI_o / mean_R SI) / (SC_o / mean_R SC) over the removable ops R (Eq. 5-7).
       shrink  drop the k lowest-S ops, never the last op of an edge (at most one per edge where
               `one_per_edge`). Once the space holds at most T architectures nothing is dropped
               (the stopping rule).
       merge   consecutive edges grouped while the product of their alive-op counts stays <= T;
       expand  every partial model of a merged group gets private copies of its edges' weights,
               initialised from the weights it runs on now.
       train   E_stage epochs of SPOS on the shrunk, expanded supernet (`final_train_epochs` after
               the last shrink), snapshots on the last epoch; with 0 epochs Wbar is expanded too.
  3. search    P(a) with Wbar over the remaining space (every child, or `final_archs` drawn
               uniformly) and a* = argmax P(a): the NB201 cell, or in the DARTS space the genotype
               the DARTS parse reads from a*'s one-hot ops.

`spos` is steps 1 and 3 on the same supernet job: the full space, `final_archs` children, but
measured with the live weights (the state's model after the last SPOS step), not Wbar: weight
averaging is SE-NAS's own (Eq. 4), so the SPOS baseline leaves it out. The supernet state carries
both, the live weights as its model and Wbar in `state.extra`; the search setting `weights`
(`averaged` | `live`) says which one a method measures.
Every stage records the best child so far, and on NB201 the Kendall tau between P(a) and the
benchmark over the children it measured; decisions go to shrink.json / search.json, the P(a)
table to p_table.json. The expansion map is kept in the state: `load_state` expands a fresh
supernet the same way before it loads the weights.
"""
from __future__ import annotations

import sys

import torch

from ..scores.child_eval import (ArchKey, benchmark_accuracies, evaluate_children, nb201_arch, rank_correlation,
                                 scoring_batches, space_size)
from ..scores.senas import candidate_archs, operator_scores, sample_archs_per_operator
from ..spaces import Space
from ..supernet.state import SupernetState
from ..supernet.train import step_settings
from ..transforms.shrink import MergedGroup, expand, merged_child_spaces, refresh_optimizer, shrink
from ..transforms.spos import SNAPSHOTS_KEY, KeptSnapshots, WeightAverage, averaged_copy, kept_average
from .base import Method, magnitude_derive, record_mask

SHRINK_PREFIX = "shrink"
EXPANSION_KEY = "se_nas_expansion"    # state.extra: the merged groups the supernet is expanded with
PROGRESS_KEY = "se_nas_stage"         # state.extra: how far the current stage got (for resuming)
SEARCH_WEIGHTS = ("averaged", "live")  # the weights the final search measures P(a) with: Wbar or the trained model


class SENas(Method):
    params_key = "se_nas"

    def __init__(self, name: str, shrinking: bool = True):
        super().__init__(name)
        self.shrinking = shrinking    # False: the SPOS baseline (no shrink stages)
        # SE-NAS measures with the snapshot average (Eq. 4); plain SPOS with the live supernet weights
        self.search_weights = "averaged" if shrinking else "live"

    # ----------------------------------------------------------------- supernet = SPOS
    def supernet(self, cfg: dict, space: str) -> dict:
        """The same settings for se_nas and spos, so both read one supernet job."""
        p = self.params(cfg)
        opt = p["optimiser"]
        search = {"epochs": p["supernet_epochs"][space], "sampling": p["sampling"],
                  "resample_all_none": p["resample_all_none"], "snapshots": p["snapshots_K"],
                  **{k: opt[k] for k in ("lr", "lr_min", "momentum", "weight_decay", "nesterov")}}
        if opt["batch_size"]:
            search["batch_size"] = opt["batch_size"]
        return {"mode": "spos", "search": search, "space": {}, "alpha_warmup": 0}

    # ----------------------------------------------------------------- stages
    def stages(self, cfg: dict, space: str) -> list[str]:
        n = self.params(cfg)["shrink_stages"][space] if self.shrinking else 0
        return [f"{SHRINK_PREFIX}{s}" for s in range(1, n + 1)] + ["search"]

    def stage_settings(self, cfg: dict, space: str, stage: str) -> dict:
        p = self.params(cfg)
        scoring = {"scoring_images": p["scoring_images"], "eval_bn": p["eval_bn"]}
        if stage == "search":
            return {**scoring, "final_archs": p["final_archs"], "weights": self.search_weights}
        s, n = int(stage[len(SHRINK_PREFIX):]), p["shrink_stages"][space]
        return {**scoring, "stage_index": s, "stages": n, "k": p["k_drop"], "T": p["T"],
                "one_per_edge": p["one_per_edge"][space],
                "si_archs": p["si_archs"], "models_per_op": p["models_per_op"],
                "per_operator": space == "darts", "snapshots": p["snapshots_K"],
                "train_epochs": p["stage_epochs"][space] if s < n else p["final_train_epochs"],
                "lr": p["optimiser"]["lr"], "lr_min": p["optimiser"]["lr_min"]}

    def prepare_stage(self, stage: str, state: SupernetState, settings: dict) -> None:
        state.extra[PROGRESS_KEY] = {"stage": stage, "start_epoch": state.epoch, "done": False}

    def load_state(self, state: SupernetState, ckpt: dict) -> None:
        """Expand the fresh supernet with the checkpoint's merged groups first: their copies are
        parameters of their own, so the optimiser is rebuilt over them before it is loaded."""
        extra = ckpt.get("extra", {})
        if EXPANSION_KEY in extra:
            groups = [MergedGroup.from_json(g) for g in extra[EXPANSION_KEY]]
            expand(state.model, groups, {k: m.bool() for k, m in ckpt["mask"].items()})
            state.w_optimizer = refresh_optimizer(state.w_optimizer, state.model)
            # placeholder settings: the checkpoint's scheduler state replaces them
            state.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(state.w_optimizer, T_max=1)
        state.load_state_dict(ckpt)

    def run_stage(self, stage: str, run, s: dict) -> dict:
        state, progress = run.state, run.state.extra[PROGRESS_KEY]
        run.step_settings = step_settings("spos", run.spec["search"])
        if not progress["done"]:
            step = self.final_search if stage == "search" else self.shrink_and_expand
            decision, table = run.timed(step, run, s)
            progress.update(done=True, decision=decision, table=table)
            self.append_record(run, decision)
        decision = progress["decision"]
        while (i := state.epoch - progress["start_epoch"]) < s.get("train_epochs", 0):
            last = i == s["train_epochs"] - 1
            hooks = [KeptSnapshots(run.data.steps_per_epoch, s["snapshots"])] if last else []
            run.epoch("spos", hooks=hooks, epoch_in_stage=i, selected_ops=decision["selected_ops"])
        name = "search.json" if stage == "search" else "shrink.json"
        return {name: decision, "p_table.json": progress["table"]}

    # ----------------------------------------------------------------- one shrink stage
    def shrink_and_expand(self, run, s: dict) -> tuple[dict, dict]:
        state, space = run.state, run.state.space
        model = averaged_model(state)
        mask = {k: m.bool().cpu() for k, m in state.mask.items()}
        if s["per_operator"]:
            samples = sample_archs_per_operator(mask, space.cell_types, s["models_per_op"], state.generator)
            archs = [a for drawn in samples.values() for a in drawn]
        else:
            samples, archs = None, candidate_archs(mask, space.cell_types, s["si_archs"], state.generator)
        p = measure(run, model, archs, s)
        scores = operator_scores(p, mask, space.cell_types, samples)
        before = space_size(mask, space.cell_types)
        k = s["k"] if before > s["T"] else 0      # the stopping rule: a space of <= T architectures stays
        new_mask, dropped = shrink(mask, scores, k, s["one_per_edge"])
        groups = merged_child_spaces(new_mask, s["T"])
        expand(state.model, groups, new_mask)
        state.mask = new_mask
        state.extra[EXPANSION_KEY] = [g.to_json() for g in groups]
        restart_schedule(state, s["lr"], s["lr_min"], s["train_epochs"])
        if s["train_epochs"] == 0:
            # no training follows: the search measures Wbar, expanded like the supernet (copies start equal)
            expand(model, groups, new_mask)
            average = WeightAverage()
            average.add(model)
            state.extra[SNAPSHOTS_KEY] = average.state_dict()
        else:
            state.extra.pop(SNAPSHOTS_KEY, None)   # its keys predate the expansion; the stage's last epoch renews it
        ops = space.ops
        decision = {**summary(run, p), "space_size_before": before,
                    "space_size_after": space_size(new_mask, space.cell_types),
                    "operator_scores": scores.to_json(ops), "dropped": [[t, e, ops[o]] for t, e, o in dropped],
                    "merged_groups": [g.to_json() for g in groups], "stopped": k == 0}
        print(f"{state.extra[PROGRESS_KEY]['stage']}: dropped {decision['dropped']}, "
              f"{len(groups)} merged groups, space {before} -> {decision['space_size_after']}",
              file=sys.stderr, flush=True)
        return decision, named_table(space, p)

    # ----------------------------------------------------------------- final search
    def final_search(self, run, s: dict) -> tuple[dict, dict]:
        state, space = run.state, run.state.space
        mask = {k: m.bool().cpu() for k, m in state.mask.items()}
        archs = candidate_archs(mask, space.cell_types, s["final_archs"], state.generator)
        p = measure(run, search_model(state, s["weights"]), archs, s)
        decision = {**summary(run, p), "space_size": space_size(mask, space.cell_types), "weights": s["weights"]}
        print(f"search: best of {len(p)} children {decision['best_arch']} P={decision['p_best']:.2f}",
              file=sys.stderr, flush=True)
        return decision, named_table(space, p)

    @staticmethod
    def append_record(run, decision: dict) -> None:
        """The history record of a stage's decision (no training epoch: the epoch count stays)."""
        state = run.state
        record = {"epoch": state.epoch, "stage": run.spec["stage"], "wall_time_s": run.wall,
                  "alpha": {k: a.detach().cpu().tolist() for k, a in state.alpha.items()},
                  "mask": {k: m.tolist() for k, m in state.mask.items()}, "arch": decision["best_arch"],
                  **{k: v for k, v in decision.items() if k != "best_arch"}}
        if decision.get("ranking"):
            record.update(kendall_tau=decision["ranking"]["kendall_tau"],
                          spearman_rho=decision["ranking"]["spearman_rho"])
        state.history.append(record)
        run.tracker.log_metrics({k: v for k, v in record.items() if isinstance(v, float)}, step=state.epoch)
        run.checkpoint()

    # ----------------------------------------------------------------- derive
    def derive(self, space: Space, record: dict, settings: dict):
        """The child a stage selected (`selected_ops`); records before the first P(a) table (the
        SPOS supernet's epochs, whose alpha is never trained) fall back to the magnitude rule."""
        if "selected_ops" not in record:
            return magnitude_derive(space, record, settings["allow_none"])
        mask = record_mask(record)
        # the selected op at weight 1, the rest of the record's space at 1e-3: NB201 reads exactly the
        # child; the DARTS parse keeps the child's ops and, on a node whose chosen inputs are `none`,
        # falls back to another alive op of the space
        weights = {k: torch.nn.functional.one_hot(torch.tensor(ops), len(space.ops)).double() + 1e-3 * mask[k]
                   for k, ops in record["selected_ops"].items()}
        return space.derive(weights, mask, True)


# --------------------------------------------------------------------------- helpers


def averaged_model(state: SupernetState) -> torch.nn.Module:
    """A copy of the supernet holding Wbar (the trained weights where no snapshot was kept)."""
    average = kept_average(state)
    if average is None:
        average = WeightAverage()
        average.add(state.model)
    return averaged_copy(state.model, average)


def search_model(state: SupernetState, weights: str) -> torch.nn.Module:
    """The supernet the final search measures: `averaged` a copy holding Wbar (SE-NAS), `live` the
    state's own model with the weights of the last training step (SPOS). Measuring leaves the
    model's weights, BN buffers and train/eval flags as they were."""
    if weights == "averaged":
        return averaged_model(state)
    if weights == "live":
        return state.model
    raise ValueError(f"unknown search weights {weights!r}; valid: {', '.join(SEARCH_WEIGHTS)}")


def measure(run, model: torch.nn.Module, archs: list[ArchKey], s: dict) -> dict[ArchKey, float]:
    """P(a) of each child with the weights of `model`, every child on the same D_val images."""
    space = run.state.space
    batches = scoring_batches(run.data, run.state.generator, s["scoring_images"], s["scoring_images"])
    none = space.ops.index("none") if "none" in space.ops else None
    return evaluate_children(model, archs, batches, space.cell_types, len(space.ops), s["eval_bn"], none,
                             progress=f"{run.spec.get('stage', 'search')}: child models measured")


def arch_name(space: Space, key: ArchKey) -> str:
    """NB201: the arch string; otherwise op names per edge of each cell type."""
    if space.name == "nb201":
        return nb201_arch(key, space.ops)
    return " | ".join(f"{k}: " + ",".join(space.ops[o] for o in ops) for k, ops in zip(space.cell_types, key))


def named_table(space: Space, p: dict[ArchKey, float]) -> dict[str, float]:
    return {arch_name(space, a): v for a, v in p.items()}


def summary(run, p: dict[ArchKey, float]) -> dict:
    """The best child of a P(a) table (ties: the first measured) and, on NB201, how P(a) ranks
    the children against the benchmark."""
    space = run.state.space
    best = max(p, key=p.get)
    out = {"children_evaluated": len(p), "best_arch": arch_name(space, best), "p_best": p[best],
           "selected_ops": {k: list(ops) for k, ops in zip(space.cell_types, best)}, "ranking": None}
    if run.bench is not None and len(p) >= 2:
        named = named_table(space, p)
        metric = f"{run.spec['dataset'].replace('-', '_')}_test_acc"
        out["ranking"] = {**rank_correlation(named, benchmark_accuracies(run.bench, named, metric)), "metric": metric}
    return out


def restart_schedule(state: SupernetState, lr: float, lr_min: float, epochs: int) -> None:
    """An optimiser over the expanded supernet's parameters (surviving ones keep their momentum)
    and a fresh cosine lr -> lr_min over the stage's epochs."""
    state.w_optimizer = refresh_optimizer(state.w_optimizer, state.model)
    for group in state.w_optimizer.param_groups:
        group["lr"] = lr
        group.pop("initial_lr", None)
    state.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(state.w_optimizer, T_max=max(epochs, 1), eta_min=lr_min)
