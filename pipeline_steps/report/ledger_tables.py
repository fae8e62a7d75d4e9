"""The report's ledger section: the NAS-Bench-201 reproductions recorded in ledger/ (paper profile,
on a GPU) beside the papers' numbers, labelled by device and commit, and the stale records (an
older protocol generation) apart. It needs no run in results/, so a fresh clone shows it."""
from __future__ import annotations

import pandas as pd

from .ledger import LEDGER_DIR, latest_per_seed
from .reproduction import method_name, reproduction_markdown, reproduction_table
from .tables import LABELS, _cell, _table

HEADLINE = ("cifar10_test_acc", "cifar100_test_acc", "imagenet16_120_test_acc")


def _unique(values) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values))


def ledger_reproduction(records: pd.DataFrame, paper: dict) -> pd.DataFrame:
    """reproduction_table over the newest current record of each seed, with device, commits and
    mean search cost per method; rows without a recorded seed are left out."""
    current = latest_per_seed(records[~records["stale"]])
    table = reproduction_table(current, paper, "nb201", "paper")
    if table.empty:
        return table
    table = table[table["n_seeds"] > 0].copy()
    groups = {key: g for key, g in current.groupby(["method", "dataset"])}
    keys = list(zip(table["method"], table["searched_on"]))
    table["device"] = [_cell(_unique(groups[k]["device_name"])) for k in keys]
    table["commits"] = [_unique(groups[k]["git_commit"]) for k in keys]
    table["search_cost_gpu_s"] = [f"{groups[k]['search_cost_gpu_s'].mean():,.0f}" for k in keys]
    return table


def ledger_markdown(records: pd.DataFrame, paper: dict, ledger_dir: str = LEDGER_DIR) -> list[str]:
    lines = ["### Reproduction (nb201): the ledger of paper-profile GPU runs", ""]
    if records.empty:
        return lines + [f"No records in `{ledger_dir}/` yet: `python -m pipeline_steps ledger add` turns finished "
                        "paper-profile GPU runs into records.", ""]
    table = ledger_reproduction(records, paper)
    current = records[~records["stale"]]
    lines += [f"Records in `{ledger_dir}/`, committed with the code: per seed the newest record of the current "
              "protocol generation, mean ± std over seeds.", ""]
    lines += reproduction_markdown(table, LABELS, (("Search cost (GPU-s)", "search_cost_gpu_s"), ("Device", "device"),
                                                   ("Commits", "commits")), paper.get("names")) or ["No current records."]
    lines.append("")
    compared = set(zip(table["method"], table["searched_on"])) if not table.empty else set()
    unpaired = latest_per_seed(current)
    unpaired = unpaired[[(m, d) not in compared for m, d in zip(unpaired["method"], unpaired["dataset"])]]
    if not unpaired.empty:
        lines += ["Recorded, without paper numbers to compare with: " + ", ".join(
            f"{method_name(paper, m)} on {d} ({len(g)} seed{'s' * (len(g) > 1)})" for (m, d), g in unpaired.groupby(["method", "dataset"]))
                  + ".", ""]
    superseded = len(current) - len(latest_per_seed(current))
    if superseded:
        lines += [f"{superseded} earlier record(s) of the same seeds not averaged in "
                  "(`python -m pipeline_steps ledger show` lists them).", ""]
    stale = records[records["stale"]]
    if not stale.empty:
        rows = [[method_name(paper, r["method"]), r["dataset"], str(r["seed"]),
                 f"{r['protocol_version']} / {'-' if pd.isna(r['current_protocol']) else int(r['current_protocol'])}",
                 *(f"{r[m]:.2f}" for m in HEADLINE), f"{r['search_cost_gpu_s']:,.0f}", _cell(r["device_name"]),
                 r["git_commit"]] for _, r in stale.iterrows()]
        lines += ["#### Stale (older protocol)", "",
                  "Made with an older protocol generation of their method (PROTOCOL_VERSIONS in "
                  "pipeline_steps/methods/__init__.py): not averaged in above.", "",
                  *_table(["Method", "Searched on", "Seed", "Protocol (record / now)", *(LABELS[m] for m in HEADLINE),
                           "Search cost (GPU-s)", "Device", "Commit"], rows), ""]
    return lines
