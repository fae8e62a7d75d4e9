"""Each method's training protocol as the pipeline will run it, resolved from params/ and a profile:
per method and stage the epochs, batch, learning-rate schedule and its length, optimisers, op set
and data split, so that a reviewer can hold them against the paper without reading code.

`python -m pipeline_steps protocol --profile paper` prints it; `protocol_rows` is what the tests
compare with METHODS.md.
"""
from __future__ import annotations

import json

from ..spaces import get_space
from .plan import Plan

ALL_METHODS = ("darts", "darts_pt", "darts_pt_fix_alpha", "darts_pt_mag", "ostr", "ostr_star", "ostr_naive",
               "hpe_darts", "hpe_darts_naswot", "se_nas", "spos", "hep_nas")

MODE_ALPHA = {"bilevel": "Adam", "bilevel_onehot_reg": "Adam + one-hot regulariser", "fixed_alpha": "frozen",
              "spos": "none (single paths)", "smd": "Adam"}


def supernet_row(plan: Plan, method: str, space: str, dataset: str) -> dict:
    spec = plan.supernet_spec(method, space, dataset, 0)
    s = spec["search"]
    ops = get_space(space, spec["space_settings"]).ops
    epochs = s["epochs"]
    period = s.get("lr_period") or epochs
    alpha = MODE_ALPHA.get(spec["mode"], spec["mode"])
    if alpha == "Adam" or alpha.startswith("Adam"):
        alpha += f" lr {s['arch_lr']} betas {tuple(s['arch_betas'])} wd {s['arch_weight_decay']}"
        if spec.get("alpha_warmup"):
            alpha += f", frozen for the first {spec['alpha_warmup']} epochs"
    return {
        "method": method, "space": space, "stage": "supernet", "mode": spec["mode"], "epochs": epochs,
        "batch_size": s["batch_size"],
        "w_optimiser": f"SGD lr {s['lr']} momentum {s['momentum']} wd {s['weight_decay']}"
                       + (" nesterov" if s.get("nesterov") else "") + f", clip {s['grad_clip']}",
        "lr_schedule": f"cosine {s['lr']} -> {s['lr_min']} over {period} epochs, stepped per epoch",
        "lr_period": period,
        "alpha_optimiser": alpha, "alpha_init": s["alpha_init"], "mixing": s["mixing"],
        "ops": list(ops),
        "data": {**spec["data"], "dataset": dataset, "train_batches": "one shuffled pass over D_tr per epoch",
                 "val_batches": "a fresh random D_val batch per alpha step" if alpha.startswith("Adam")
                 else "no alpha steps"},
    }


def stage_rows(plan: Plan, method: str, space: str, dataset: str) -> list[dict]:
    from ..methods import get_method

    rows = []
    for stage in get_method(method).stages(plan.cfg, space):
        spec = plan.method_stage_spec(method, space, dataset, 0, stage)
        rows.append({"method": method, "space": space, "stage": stage, "batch_size": spec["search"]["batch_size"],
                     "settings": spec["settings"]})
    return rows


def protocol_rows(cfg: dict, methods=None, spaces=None, dataset: str | None = None) -> list[dict]:
    plan = Plan(cfg, identify_data=False)
    dataset = dataset or cfg["datasets"][0]
    rows = []
    for space in spaces or cfg["spaces"]:
        for method in methods or ALL_METHODS:
            rows.append(supernet_row(plan, method, space, dataset))
            rows.extend(stage_rows(plan, method, space, dataset))
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = []
    last = None
    for r in rows:
        head = (r["method"], r["space"])
        if head != last:
            lines.append(f"\n== {r['method']} on {r['space']} ==")
            last = head
        if r["stage"] == "supernet":
            lines.append(f"  supernet  {r['mode']}, {r['epochs']} epochs, batch {r['batch_size']}")
            for key in ("w_optimiser", "lr_schedule", "alpha_optimiser", "alpha_init", "mixing"):
                lines.append(f"    {key:16s}{r[key]}")
            lines.append(f"    {'ops':16s}{', '.join(r['ops'])}")
            d = r["data"]
            split = f"{d['dataset']}: D_tr first {d['train_portion']:.0%} / D_val the rest of " \
                    f"{'all' if d['max_images'] is None else d['max_images']} training images, " \
                    f"{'native size' if d['image_size'] is None else str(d['image_size']) + ' px'}"
            lines.append(f"    {'data':16s}{split}; {d['train_batches']}; {d['val_batches']}")
        else:
            lines.append(f"  {r['stage']:9s} batch {r['batch_size']}  " + json.dumps(r["settings"], sort_keys=True))
    return "\n".join(lines).lstrip("\n")
