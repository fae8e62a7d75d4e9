"""DARTS-PT (Wang et al., ICLR 2021): perturbation-based selection on a trained supernet (METHODS.md 5).

  1. supernet  The DARTS supernet (shared with DARTS and OStr when settings agree), or, for
               `darts_pt_fix_alpha`, one whose alpha is never trained.
  2. select    Fine-tune with a fresh SGD (`tune_lr`; constant on NB201, cosine on the DARTS space)
               and, at the start of every `proj_intv`-th tuning epoch (and of the last one), decide:
                 op decision   an undecided edge, drawn at random; ACC\\o = validation accuracy with
                               theta[e, o] := 0 for each candidate o (the whole D_val half, or
                               `eval_images` of it drawn once for a quick look; train-mode BN); keep
                               the op whose removal hurts most, argmin ACC\\o. The edge is
                               discretised: only that op stays alive in the mask, so its weight is 1.
                               (DARTS space: one normal and one reduction edge per decision.)
                 topology      (DARTS space, once every edge has its op) a random node with more than
                               two inputs. `topology: one_pass` (default; the paper's Algorithm 2 and
                               what the authors' `project_edge` computes, since its rounds never mask
                               an input): score every input once on the unchanged network, ACC\\e =
                               validation accuracy with row e of theta := 0, and keep the two whose
                               removal hurts most (lowest ACC\\e, or highest loss; the earlier input
                               wins ties); the others are masked. `topology: iterative`:
                               while the node has more than two inputs, drop the one whose removal
                               hurts least (argmax ACC\\e, the last maximum on ties) and mask it before
                               the remaining inputs are scored again.
               Each tuning step is an alpha step then a weight step (weights only for fix-alpha).
               tune_epochs = proj_intv * (decisions - 1), + 1 on the DARTS space (the code's count),
               so the last decision gets one tuning epoch.
  3. derive    The argmax of the projected weights per edge; DARTS space: the DARTS parse.

`darts_pt_mag` is the PT-Mag ablation: the same progressive tuning, but each decision keeps the
op (and the inputs) with the largest softmax(alpha).
"""
from __future__ import annotations

import sys

import torch

from ..common.errors import NasflowError
from ..scores.perturbation import (edge_removal_table, least_important, most_important, most_important_k,
                                   op_removal_table)
from ..spaces.darts import EDGE_NODE
from ..supernet.state import SupernetState
from .base import Method

VARIANTS = ("pt", "fix_alpha", "mag")
TOPOLOGY_RULES = ("one_pass", "iterative")  # the first is the default


def topology_rule(settings: dict) -> str:
    """The DARTS-space input-selection rule of `settings` (`topology`, default one_pass)."""
    rule = settings.get("topology", TOPOLOGY_RULES[0])
    if rule not in TOPOLOGY_RULES:
        raise NasflowError(f"invalid parameter method.darts_pt.topology = {rule!r}: valid values are "
                           f"{', '.join(TOPOLOGY_RULES)}")
    return rule


class DartsPT(Method):
    params_key = "darts_pt"

    def __init__(self, name: str, variant: str):
        super().__init__(name)
        assert variant in VARIANTS
        self.variant = variant

    def check(self, cfg: dict) -> None:
        topology_rule(self.params(cfg))

    def supernet_mode(self, cfg: dict) -> str:
        return "fixed_alpha" if self.variant == "fix_alpha" else "bilevel"

    def stages(self, cfg: dict, space: str) -> list[str]:
        return ["select"]

    def stage_settings(self, cfg: dict, space: str, stage: str) -> dict:
        p = self.params(cfg)
        search = {**cfg["search"], **self.preset(cfg, space).get("search", {})}
        s = {"variant": self.variant, "proj_intv": p["proj_intv"], "criterion": p["criterion"],
             "tune_lr": p["tune_lr"], "tune_lr_min": p["tune_lr_min"], "tune_schedule": p["tune_schedule"][space],
             "momentum": search["momentum"], "weight_decay": search["weight_decay"],
             "eval_batch_size": p["eval_batch_size"] or search["batch_size"]}
        if p.get("eval_images"):  # a quick look only; unset, stage keys stay those of the paper setting
            s["eval_images"] = p["eval_images"]
        if space == "darts":  # NB201 has no topology step: its settings (and stage key) stay as they are
            s["topology"] = topology_rule(p)
        return s

    # ----------------------------------------------------------------- select stage
    def prepare_stage(self, stage: str, state: SupernetState, s: dict) -> None:
        """Fine-tuning restarts the weight optimiser (the code's fresh SGD at 0.1 x the search LR)."""
        state.extra["pt"] = {"start_epoch": state.epoch, "tune_epochs": tuning_epochs(state, s["proj_intv"]),
                             "decisions": []}
        if s.get("eval_images"):  # the subset of D_val, drawn once: a resumed stage scores the same images
            state.extra["pt"]["val_seed"] = int(torch.randint(2**31, (1,), generator=state.generator))
        state.w_optimizer = torch.optim.SGD(state.model.parameters(), lr=s["tune_lr"], momentum=s["momentum"],
                                            weight_decay=s["weight_decay"])
        if s["tune_schedule"] == "cosine":
            state.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                state.w_optimizer, T_max=state.extra["pt"]["tune_epochs"], eta_min=s["tune_lr_min"])
        else:
            state.scheduler = torch.optim.lr_scheduler.ConstantLR(state.w_optimizer, factor=1.0, total_iters=0)

    def run_stage(self, stage: str, run, s: dict) -> dict:
        state, pt = run.state, run.state.extra["pt"]
        mode = "fixed_alpha" if s["variant"] == "fix_alpha" else "bilevel"
        intv, total = s["proj_intv"], pt["tune_epochs"]
        val = None
        while (t := state.epoch - pt["start_epoch"]) < total:
            decided_now = any(d["epoch"] == t for d in pt["decisions"])
            if (t % intv == 0 or t == total - 1) and not decided_now and undecided(state):
                if val is None and s["variant"] != "mag":  # the whole D_val half, kept on the device
                    limit = s.get("eval_images")
                    subset = torch.Generator().manual_seed(pt["val_seed"]) if limit else None
                    val = list(run.data.val_batches(s["eval_batch_size"], limit, generator=subset))
                run.timed(self.decide, state, val, t, s)
                run.checkpoint()  # a kill during tuning does not redo this decision
            run.epoch(mode, tune_epoch=t + 1)
        return {"decisions.json": pt["decisions"]}

    def decide(self, state: SupernetState, val, t: int, s: dict) -> None:
        """One projection event: an op decision per cell type, or, once all ops are chosen, a topology one."""
        phase = "op" if any(op_edges(state, k) for k in state.alpha) else "topology"
        for kind in state.alpha:
            candidates = op_edges(state, kind) if phase == "op" else topology_nodes(state, kind)
            if not candidates:
                continue
            pick = candidates[int(torch.randint(len(candidates), (1,), generator=state.generator))]
            decision = (self.decide_op(state, val, kind, pick, s) if phase == "op"
                        else self.decide_topology(state, val, kind, pick, s))
            decision.update(epoch=t, cell_type=kind)
            state.extra["pt"]["decisions"].append(decision)
            print(f"decision at tuning epoch {t}: {decision}", file=sys.stderr, flush=True)

    def decide_op(self, state: SupernetState, val, kind: str, edge: int, s: dict) -> dict:
        cands = candidate_ops(state, kind, edge)
        if s["variant"] == "mag":
            theta = state.weights()[kind][edge].detach().cpu()
            table = [{"op": state.space.ops[o], "index": o, "weight": float(theta[o])} for o in cands]
            best = max(range(len(cands)), key=lambda i: (table[i]["weight"], -i))
        else:
            table = op_removal_table(state, val, kind, edge, cands)
            best = most_important(table, s["criterion"])
        chosen = cands[best]
        state.mask[kind][edge] = False
        state.mask[kind][edge, chosen] = True
        return {"type": "op", "edge": edge, "table": table, "chosen": state.space.ops[chosen]}

    def decide_topology(self, state: SupernetState, val, kind: str, node: int, s: dict) -> dict:
        """Keep two inputs of `node` and mask the others (rule: `topology` of the settings)."""
        if topology_rule(s) == "iterative":
            return self.decide_topology_iterative(state, val, kind, node, s)
        edges = node_edges(state, kind, node)
        if s["variant"] == "mag":  # the chosen op's share of softmax(alpha) on each input
            table = edge_weight_table(state, kind, edges)
            top2 = sorted(range(len(edges)), key=lambda i: (-table[i]["weight"], i))[:2]
        else:  # every input scored on the same, unchanged network
            table = edge_removal_table(state, val, kind, edges)
            top2 = most_important_k(table, s["criterion"], 2)
        keep = {edges[i] for i in top2}
        dropped = [e for e in edges if e not in keep]
        for e in dropped:
            state.mask[kind][e] = False
        return {"type": "topology", "rule": "one_pass", "node": node, "table": table, "dropped": dropped,
                "kept": node_edges(state, kind, node)}

    def decide_topology_iterative(self, state: SupernetState, val, kind: str, node: int, s: dict) -> dict:
        """Backward elimination: drop the least important input, mask it, score the rest again."""
        rounds = []
        while len(edges := node_edges(state, kind, node)) > 2:
            if s["variant"] == "mag":
                table = edge_weight_table(state, kind, edges)
                drop = min(range(len(edges)), key=lambda i: (table[i]["weight"], -i))
            else:
                table = edge_removal_table(state, val, kind, edges)
                drop = least_important(table, s["criterion"])
            state.mask[kind][edges[drop]] = False
            rounds.append({"table": table, "dropped": edges[drop]})
        return {"type": "topology", "rule": "iterative", "node": node, "rounds": rounds,
                "kept": node_edges(state, kind, node)}


def edge_weight_table(state: SupernetState, kind: str, edges: list[int]) -> list[dict]:
    """PT-Mag's edge strength: the largest alive share of softmax(alpha) on each input."""
    theta = torch.softmax(state.alpha[kind].detach().cpu(), dim=-1)
    return [{"edge": e, "weight": float((theta[e] * state.mask[kind][e]).max())} for e in edges]


# --------------------------------------------------------------------------- what is still undecided


def candidate_ops(state: SupernetState, kind: str, edge: int) -> list[int]:
    """Alive ops of an edge; in the DARTS space `none` is never a candidate (METHODS.md 5.6)."""
    ops = torch.nonzero(state.mask[kind][edge]).flatten().tolist()
    if state.space.name == "darts":
        ops = [o for o in ops if state.space.ops[o] != "none"]
    return ops


def op_edges(state: SupernetState, kind: str) -> list[int]:
    return [e for e in range(state.space.num_edges) if len(candidate_ops(state, kind, e)) > 1]


def node_edges(state: SupernetState, kind: str, node: int) -> list[int]:
    return [e for e, n in enumerate(EDGE_NODE) if n == node and bool(state.mask[kind][e].any())]


def topology_nodes(state: SupernetState, kind: str) -> list[int]:
    if state.space.name != "darts":
        return []
    return sorted({n for n in EDGE_NODE if len(node_edges(state, kind, n)) > 2})


def undecided(state: SupernetState) -> bool:
    return any(op_edges(state, k) or topology_nodes(state, k) for k in state.alpha)


def tuning_epochs(state: SupernetState, proj_intv: int) -> int:
    """The code's schedule: NB201 proj_intv * (edges - 1) = 25; DARTS proj_intv * (14 + 3 - 1) + 1 = 81.
    Decisions fall on multiples of proj_intv and on the last epoch; with proj_intv = 1 that needs
    one epoch per decision."""
    op_events = max(len(op_edges(state, k)) for k in state.alpha)
    topology_events = max(len(topology_nodes(state, k)) for k in state.alpha)
    events = op_events + topology_events
    code = proj_intv * (events - 1) + (1 if state.space.name == "darts" else 0)
    return max(code, events, 1)
