"""HEP-NAS (few-shot NAS with hierarchical edge partitioning and search-space mutual distillation;
METHODS.md 2), Algorithm 1 as one cached stage per hierarchy:

  1. supernet  One-shot DARTS training of M_opt^0 to the first split epoch t_1, alpha frozen for
               the first `alpha_warmup` epochs (DARTS space, code: the one-hot alpha regulariser
               of 2.3.6 on every alpha step). The cosine LR period is `lr_period` (2.3.7).
  2. h1..hK    One stage per split level h_k of split_plan (hierarchy-wise: the incoming edges of
               one node, in node order; ablations: edge-wise, reversed or random order, fewer
               levels, which cell types):
                 partition  per edge e in h_k the gradient-matching distances Dbar_e over R D_tr
                            batches and the min-cut split into (G_e, O\\G_e) (logged)
                 spawn      2^|h_k| children, one per element of prod_e {G_e, O\\G_e}, each a full
                            deep copy of M_opt^(k-1) with its mask ANDed and its own batch
                            stream (generator seeded from run seed, level and child index)
                 SMD        E_smd(k) round robins: child 1 trains one epoch, then child 2, ...
                            with CE + KL to the frozen teacher M_opt^(k-1) + the mean KL to the
                            siblings; alpha is updated unless the epoch label
                            (previous split epoch + t - 1, the code's reuse) is in the warm-up.
                            Every child's validation accuracy is logged after every SMD epoch.
                 select     M_opt^k = the child with the best validation accuracy after the last
                            SMD epoch (first maximum wins; BN batch statistics on NB201, running
                            statistics on the DARTS space)
                 continue   M_opt^k trains (one-shot, no distillation) from t_k to t_(k+1); after
                            the last level, `final_tune_epochs` (DARTS space code: 15 with the
                            regulariser).
  3. derive    The argmax of the masked softmax per edge (NB201, `none` allowed); DARTS: the parse.

A kill resumes at the level it hit: finished levels are cached stages; inside a level the
partition, the children after every SMD epoch and the continue epochs are checkpointed.

`none` takes part in the gradient matching and the min-cut like any op (group sizes follow from
|O|: 2..4 ops in G with the 8-op DARTS set). On the DARTS space a split never leaves `none` alone
on an edge (the parse could not use that edge; only small op sets such as s3 get that far).
`keep_none_in_both_groups: true` (method setting, default false) instead leaves `none` out of the
matching and keeps it alive in both groups.

Settings: the section's keys, with the selected preset's values filling those left null. A preset
entry may also carry `search` / `space` overrides of the supernet (e.g. `space: {op_set:
darts_no_none}`), and `batch_size` (one value or per space; null: search.batch_size, or the
preset's `search.batch_size`) sets the D_tr / D_val batch of the whole lineage.
"""
from __future__ import annotations

import copy
import itertools
import sys

import torch

from ..common.atomic import atomic_path
from ..common.errors import NasflowError
from ..scores.gradient_matching import gradient_matching_distances
from ..spaces import get_space
from ..supernet.state import SupernetState
from ..supernet.train import evaluate
from ..transforms.distill import SMDSettings, smd_epoch
from ..transforms.partition import EdgeSplit, spawn_children, split_edges, split_plan
from .base import Method


class HEPNas(Method):
    params_key = "hep_nas"

    # ----------------------------------------------------------------- params
    def settings(self, cfg: dict, space: str) -> dict:
        """The section with its preset applied (keys set to non-null values win) and per-space values
        picked; `search` and `space` are the preset's supernet overrides ({} when it has none)."""
        section = cfg["method"][self.params_key]
        preset = dict(section["presets"][section["preset"]].get(space, {}))
        overrides = {"search": dict(preset.pop("search", None) or {}), "space": dict(preset.pop("space", None) or {})}
        own = {k: v[space] if isinstance(v, dict) and space in v else v for k, v in section.items() if k != "presets"}
        own.setdefault("batch_size", None)
        own.setdefault("keep_none_in_both_groups", False)
        return {**own, **{k: v for k, v in preset.items() if own.get(k) is None}, **overrides}

    def check(self, cfg: dict) -> None:
        for space in cfg["spaces"]:
            p = self.settings(cfg, space)
            splits = p["split_epochs"]
            if any(b <= a for a, b in itertools.pairwise(splits)):
                raise NasflowError(f"invalid parameter method.hep_nas.split_epochs.{space} = {splits}: "
                                   "the split epochs must increase")
            batch = p["batch_size"]
            if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
                raise NasflowError(f"invalid parameter method.hep_nas.batch_size = {batch!r} ({space}): "
                                   "a positive integer, one per space, or null")
            if not isinstance(p["keep_none_in_both_groups"], bool):
                raise NasflowError("invalid parameter method.hep_nas.keep_none_in_both_groups = "
                                   f"{p['keep_none_in_both_groups']!r}: true or false")
            self.levels(cfg, space)  # raises on a bad granularity, order, level count or cell type

    def space_settings(self, cfg: dict, space: str) -> dict:
        """The settings of the space this method's supernet is built on (the preset's overrides applied)."""
        return {**cfg["space"][space], **self.settings(cfg, space)["space"]}

    def levels(self, cfg: dict, space: str) -> list[tuple[tuple[str, int], ...]]:
        p = self.settings(cfg, space)
        return split_plan(get_space(space, self.space_settings(cfg, space)), p["granularity"], p["order"],
                          seed=p["order_seed"], levels=p["hierarchies"], cell_types=p["split_cell_types"])

    def schedule(self, cfg: dict, space: str) -> dict:
        """Split epochs, SMD and continue epochs per level, and the cosine period of the lineage."""
        p, n = self.settings(cfg, space), len(self.levels(cfg, space))
        splits = list(p["split_epochs"])
        while len(splits) < n:  # more levels than split epochs (edge-wise, both cell types): the last gap again
            splits.append(splits[-1] + (splits[-1] - splits[-2] if len(splits) > 1 else splits[-1]))
        splits = splits[:n]
        smd = p["smd_epochs"] if isinstance(p["smd_epochs"], list) else [p["smd_epochs"]]
        smd = (smd + [smd[-1]] * n)[:n]  # "then 4": the last value repeats
        cont = [splits[k + 1] - splits[k] for k in range(n - 1)] + [p["final_tune_epochs"]]
        lineage = splits[0] + sum(smd) + sum(cont)
        period = splits[-1] if p["lr_schedule"] == "code_faithful" else lineage
        return {"splits": splits, "smd": smd, "continue": cont, "lr_period": period, "lineage_epochs": lineage}

    def train_mode(self, cfg: dict, space: str) -> str:
        p = self.settings(cfg, space)
        return "bilevel_onehot_reg" if space == "darts" and p["darts_onehot_reg"] else "bilevel"

    # ----------------------------------------------------------------- supernet and stages
    def supernet(self, cfg: dict, space: str) -> dict:
        """The preset's `search` / `space` overrides, the method's batch size (every later level
        reads the same supernet spec, so it holds for SMD, continue training and selection too),
        the first split epoch and the cosine period."""
        p, sched = self.settings(cfg, space), self.schedule(cfg, space)
        search = dict(p["search"])
        if p["batch_size"] is not None:
            search["batch_size"] = p["batch_size"]
        search.update(epochs=sched["splits"][0], lr_period=sched["lr_period"])
        return {"mode": self.train_mode(cfg, space), "space": dict(p["space"]), "search": search,
                "alpha_warmup": p["alpha_warmup"]}

    def stages(self, cfg: dict, space: str) -> list[str]:
        return [f"h{k + 1}" for k in range(len(self.levels(cfg, space)))]

    def stage_settings(self, cfg: dict, space: str, stage: str) -> dict:
        p, sched, levels = self.settings(cfg, space), self.schedule(cfg, space), self.levels(cfg, space)
        k = int(stage[1:]) - 1
        return {"level": k + 1, "edges": [list(e) for e in levels[k]], "split_rule": space,
                "gm_repeats": p["gm_repeats"], "gm_hard": p["gm_hard"],
                "keep_none_in_both_groups": p["keep_none_in_both_groups"],
                "smd_epochs": sched["smd"][k], "smd_label_start": sched["splits"][k - 1] if k else 0,
                "continue_epochs": sched["continue"][k], "continue_label_start": sched["splits"][k],
                "alpha_warmup": p["alpha_warmup"], "continue_mode": self.train_mode(cfg, space),
                "guidance": p["guidance"], "kd_direction": p["kd_direction"], "temperature": p["temperature"],
                "select_bn": p["select_bn"], "eval_batch_size": p["eval_batch_size"]}

    def derive_settings(self, cfg: dict, space: str) -> dict:
        return {"allow_none": self.settings(cfg, space)["allow_none_in_derive"]}

    # ----------------------------------------------------------------- one level
    def prepare_stage(self, stage: str, state: SupernetState, s: dict) -> None:
        """A level starts from the previous optimum; its own resume point (if any) replaces this."""
        state.extra["hep"] = {"stage": stage, "phase": "smd", "log": {"level": s["level"], "edges": s["edges"]}}

    def run_stage(self, stage: str, run, s: dict) -> dict:
        state, hep = run.state, run.state.extra["hep"]
        if hep["phase"] == "smd":
            self.split_and_select(stage, run, s)
            hep = state.extra["hep"]
        while state.epoch < hep["continue_until"]:
            label = s["continue_label_start"] + state.epoch - hep["continue_from"]
            run.epoch(s["continue_mode"] if label >= s["alpha_warmup"] else "fixed_alpha",
                      hierarchy=s["level"], phase="continue")
        return {"hierarchy.json": hep["log"]}

    def split_and_select(self, stage: str, run, s: dict) -> None:
        state, hep = run.state, run.state.extra["hep"]
        log = hep["log"]
        if "partition" not in log:
            log["partition"] = run.timed(self.partition, run, s)
            run.checkpoint()  # a kill during SMD does not redo the gradient matching
        splits = [EdgeSplit(p["cell_type"], p["edge"], tuple(tuple(g) for g in p["groups"]), p["within_distance"])
                  for p in log["partition"] if p["split"]]
        teacher = copy.deepcopy(state)  # M_opt^(k-1), never trained again
        children = spawn_children(state, splits, seed=run.spec["seed"], level=s["level"])  # own batch streams
        saved = run.resume.with_name("children.pt")
        done, records = self.load_children(run, saved, children)
        val = list(run.data.val_batches(s["eval_batch_size"]))
        smd = SMDSettings(grad_clip=run.step_settings.grad_clip, mixing=run.step_settings.mixing,
                          guidance=s["guidance"], kd_direction=s["kd_direction"], temperature=s["temperature"])
        for t in range(done, s["smd_epochs"]):
            label = s["smd_label_start"] + t
            trained = run.timed(smd_epoch, children, teacher, run.data, smd, update_alpha=label >= s["alpha_warmup"])
            for m, (child, rec) in enumerate(zip(children, trained)):
                loss, acc = run.timed(evaluate, child, val, train_bn=s["select_bn"] == "batch_stats")
                records[m].append(self.smd_record(run, stage, s, child, m, t, rec, loss, acc))
            with atomic_path(saved) as tmp:
                torch.save({"key": run.key, "done": t + 1, "children": [c.state_dict() for c in children],
                            "records": records}, tmp)
            run.checkpoint()  # the wall time so far
            run.tracker.log_metrics({f"h{s['level']}_child{m}_val_acc": r[-1]["select_val_acc"]
                                     for m, r in enumerate(records)}, step=t + 1)
            print(f"{stage} SMD epoch {t + 1}: child val acc "
                  + " ".join(f"{r[-1]['select_val_acc']:.2f}" for r in records), file=sys.stderr, flush=True)
        final = [r[-1]["select_val_acc"] if r else float("-inf") for r in records]
        best = max(range(len(children)), key=lambda m: (final[m], -m))  # the first maximum wins
        log["children"] = [{"child": m, "mask": {k: c.mask[k].int().tolist() for k in c.mask},
                            "val_acc": [r["select_val_acc"] for r in records[m]],
                            "val_loss": [r["select_val_loss"] for r in records[m]],
                            "train_loss": [r["train_loss"] for r in records[m]]} for m, c in enumerate(children)]
        log["chosen"] = best
        state.load_state_dict(children[best].state_dict())  # weights, alpha, mask, optimisers, LR, epoch, RNG
        state.history.extend({**r, "wall_time_s": run.wall} for r in records[best])
        state.extra["hep"] = {**hep, "phase": "continue", "log": log, "continue_from": state.epoch,
                              "continue_until": state.epoch + s["continue_epochs"]}
        run.checkpoint()
        saved.unlink(missing_ok=True)
        print(f"{stage}: kept child {best} of {len(children)} (val acc {final[best]:.2f})", file=sys.stderr, flush=True)

    def partition(self, run, s: dict) -> list[dict]:
        """Dbar_e and the min-cut groups of every edge of the level, over every alive op (`none`
        included); edges with fewer than two candidate ops stay whole. With
        `keep_none_in_both_groups`, `none` is left out of the matching and added to both groups."""
        state, space = run.state, run.state.space
        none = space.ops.index("none") if s["keep_none_in_both_groups"] and "none" in space.ops else None
        # the DARTS parse never picks `none`: an edge left with `none` alone is of no use to a child
        not_alone = (space.ops.index("none"),) if space.name == "darts" and "none" in space.ops and none is None \
            else ()
        edges, whole = [], []
        for kind, e in s["edges"]:
            alive = [o for o in torch.nonzero(state.mask[kind][e].cpu()).flatten().tolist() if o != none]
            needed = 3 if any(o in not_alone for o in alive) else 2
            (edges if len(alive) >= needed else whole).append((kind, e))
        original = state.mask
        state.mask = {k: m.clone() for k, m in original.items()}
        if none is not None:
            for kind, e in edges:
                state.mask[kind][e, none] = False
        generator = torch.Generator().manual_seed(1000 * run.spec["seed"] + s["level"])  # the lineage's RNG untouched
        try:
            distances = gradient_matching_distances(state, run.data, edges, generator, hard=s["gm_hard"],
                                                    repeats=s["gm_repeats"], mixing=run.step_settings.mixing) \
                if edges else []
        finally:
            state.mask = original
        out = []
        for d, split in zip(distances, split_edges(distances, s["split_rule"], not_alone)):
            groups = split.groups if none is None else tuple(g + (none,) for g in split.groups)
            out.append({"cell_type": d.cell_type, "edge": d.edge, "split": True, "ops": [space.ops[o] for o in d.ops],
                        "distance": d.distance.tolist(), "groups": [list(g) for g in groups],
                        "group_ops": [[space.ops[o] for o in g] for g in groups],
                        "within_distance": split.within_distance})
        out += [{"cell_type": kind, "edge": e, "split": False} for kind, e in whole]
        return out

    def smd_record(self, run, stage: str, s: dict, child: SupernetState, m: int, t: int, rec: dict,
                   loss: float, acc: float) -> dict:
        """A history record of child m after SMD epoch t (those of the chosen child join the history)."""
        return {**rec, "stage": stage, "hierarchy": s["level"], "phase": "smd", "child": m, "smd_epoch": t + 1,
                "select_val_loss": loss, "select_val_acc": acc,
                "alpha": {k: a.detach().cpu().tolist() for k, a in child.alpha.items()},
                "mask": {k: mk.tolist() for k, mk in child.mask.items()},
                "arch": str(child.space.derive(child.weights(run.step_settings.mixing), child.mask, True))}

    def load_children(self, run, path, children: list[SupernetState]) -> tuple[int, list[list[dict]]]:
        """The children as the last finished SMD epoch left them (none finished: as spawned)."""
        if path.exists():
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            if ckpt["key"] == run.key and len(ckpt["children"]) == len(children):
                for child, state in zip(children, ckpt["children"]):
                    child.load_state_dict(state)
                print(f"resuming SMD after epoch {ckpt['done']}", file=sys.stderr)
                return ckpt["done"], ckpt["records"]
        return 0, [[] for _ in children]
