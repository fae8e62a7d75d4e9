"""The ledger of reproduced results: one small JSON record per finished paper-profile NAS-Bench-201
run on a GPU, committed to git under `ledger/{space}/{dataset}/{method}/seed{seed}-{git_commit}.json`
(not a DVC output), so that a fresh clone's report shows every reproduction ever measured.

A record is made from a run's `lookup/result.json` and its provenance (profile, commit, protocol
generation, device, torch, data fingerprint). Runs of another profile, runs with a stage off CUDA,
runs made before results recorded their provenance, and unfinished runs are refused. A record
whose protocol generation is below its method's current one (methods.PROTOCOL_VERSIONS) is stale.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from ..common.atomic import read_json, write_json
from ..common.errors import NasflowError
from .reproduction import NB201_METRICS
from .tables import search_cost_s

LEDGER_DIR = "ledger"
RESULT_FILE = "{results}/nb201/{dataset}/seed{seed}/{method}/lookup/result.json"
# field -> accepted types; every field is required
RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "method": (str,), "space": (str,), "dataset": (str,), "seed": (int,), "arch": (str,),
    **{m: (int, float) for m in NB201_METRICS},
    "search_cost_gpu_s": (int, float), "device_name": (str,), "torch": (str,), "git_commit": (str,),
    "profile": (str,), "protocol_version": (int,), "data_fingerprint": (str,), "recorded_at": (str,),
}
PROVENANCE = ("profile", "git_commit", "protocol_version", "device_name", "torch", "data_fingerprint", "stages")
STAGE_PROVENANCE = ("device_name", "torch", "data_fingerprint", "wall_time_s")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # goes into a file name
COLUMNS = [*RECORD_FIELDS, "current_protocol", "stale", "file"]


def _on_cuda(name) -> bool:
    """device_name is the CUDA card's name; `cpu` (any non-CUDA device) or nothing is not a GPU."""
    return isinstance(name, str) and bool(name.strip()) and name.strip().lower() != "cpu"


def _unique(values) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values))


def make_record(result_file: str | Path, recorded_at: str | None = None) -> dict:
    """The ledger record of one finished run, or a NasflowError naming the file and why not."""
    path = Path(result_file)
    if not path.is_file():
        raise NasflowError(f"{path}: no result.json, the run has not finished")
    try:
        r = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NasflowError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(r, dict):
        raise NasflowError(f"{path} is not a lookup result (not a JSON object)")
    absent = [k for k in ("arch_str", *NB201_METRICS, "method", "space", "dataset", "seed", "wall_time_s")
              if k not in r]
    if absent:
        raise NasflowError(f"{path} is not a NAS-Bench-201 lookup result (no {', '.join(absent)})")
    stages = r.get("stages")
    missing = [k for k in PROVENANCE if r.get(k) in (None, "", [], "unknown")]
    if not missing and isinstance(stages, list):
        missing = sorted({f"stages[].{k}" for s in stages for k in STAGE_PROVENANCE
                          if not isinstance(s, dict) or s.get(k) is None})
    if missing:
        raise NasflowError(f"{path}: no {', '.join(missing)} (made before results recorded their provenance); "
                           "re-run it to make a record")
    if r["profile"] != "paper":
        raise NasflowError(f"{path}: profile {r['profile']!r}, not 'paper': only paper-profile runs are reproductions")
    off = [f"{s.get('stage', 'supernet')} on {s.get('device_name')!r}" for s in stages
           if not _on_cuda(s.get("device_name"))]
    if off or not _on_cuda(r["device_name"]):
        raise NasflowError(f"{path}: not every stage ran on a CUDA device "
                           f"({', '.join(off) or 'device_name ' + repr(r['device_name'])}); the ledger holds GPU runs")
    if not SAFE_NAME.match(str(r["git_commit"])):
        raise NasflowError(f"{path}: git_commit {r['git_commit']!r} cannot name a ledger file")
    record = {"method": r["method"], "space": r["space"], "dataset": r["dataset"], "seed": r["seed"],
              "arch": r["arch_str"], **{m: r[m] for m in NB201_METRICS},
              "search_cost_gpu_s": search_cost_s(r["wall_time_s"]),
              "device_name": _unique(s["device_name"] for s in stages), "torch": str(r["torch"]),
              "git_commit": str(r["git_commit"]), "profile": r["profile"], "protocol_version": r["protocol_version"],
              "data_fingerprint": str(r["data_fingerprint"]),
              "recorded_at": recorded_at or datetime.now(timezone.utc).isoformat(timespec="seconds")}
    check_record(record, path)
    return record


def record_path(record: dict, root: str | Path = LEDGER_DIR) -> Path:
    return (Path(root) / record["space"] / record["dataset"] / record["method"]
            / f"seed{record['seed']}-{record['git_commit']}.json")


def write_record(record: dict, root: str | Path = LEDGER_DIR) -> tuple[Path, str]:
    """Write atomically; an identical record already there (all but recorded_at) is left alone.
    Returns the path and `added`, `updated` or `unchanged`."""
    path = record_path(record, root)
    status = "added"
    if path.exists():
        try:
            old = read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        same = isinstance(old, dict) and {k: v for k, v in old.items() if k != "recorded_at"} == \
            {k: v for k, v in record.items() if k != "recorded_at"}
        if same:
            return path, "unchanged"
        status = "updated"
    write_json(path, record)
    return path, status


def check_record(record, path: str | Path) -> None:
    """A record has every field, each of its type; its place in the ledger matches its contents."""
    if not isinstance(record, dict):
        raise NasflowError(f"{path}: a ledger record must be a JSON object")
    missing = [k for k in RECORD_FIELDS if k not in record]
    if missing:
        raise NasflowError(f"{path}: ledger record without {', '.join(missing)}")
    for k, types in RECORD_FIELDS.items():
        v = record[k]
        if isinstance(v, bool) or not isinstance(v, types):
            want = " or ".join(t.__name__ for t in types)
            raise NasflowError(f"{path}: ledger field {k} must be {want}, got {v!r}")
    if record["profile"] != "paper":
        raise NasflowError(f"{path}: ledger record of profile {record['profile']!r}; only paper-profile runs belong")
    for k in ("space", "dataset", "method", "git_commit"):
        if not SAFE_NAME.match(record[k]):
            raise NasflowError(f"{path}: ledger field {k} {record[k]!r} cannot name a ledger file")


def load_ledger(root: str | Path = LEDGER_DIR) -> pd.DataFrame:
    """Every record under `root` (the ledger directory), checked, one row each, with the protocol
    generation now current for its method and whether the record is stale (older than that)."""
    from ..methods import PROTOCOL_VERSIONS

    root = Path(root)
    rows = []
    for path in sorted(root.rglob("*.json")) if root.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise NasflowError(f"{path} is not valid JSON ({e})") from None
        check_record(record, path)
        expected = record_path(record, root)
        if path.resolve() != expected.resolve():
            raise NasflowError(f"{path}: the record belongs in {expected} (space/dataset/method/seed-commit)")
        current = PROTOCOL_VERSIONS.get(record["method"])
        rows.append({**{k: record[k] for k in RECORD_FIELDS}, "current_protocol": current,
                     "stale": current is None or record["protocol_version"] < current, "file": str(path)})
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["stale"] = table["stale"].astype(bool)
    return table.sort_values(["method", "dataset", "seed", "recorded_at"], ignore_index=True)


def latest_per_seed(records: pd.DataFrame) -> pd.DataFrame:
    """One record per method, dataset and seed: the newest protocol generation, then the newest record."""
    if records.empty:
        return records
    ordered = records.sort_values(["protocol_version", "recorded_at"])
    return ordered.drop_duplicates(["method", "dataset", "seed"], keep="last").sort_values(
        ["method", "dataset", "seed"], ignore_index=True)


# ----------------------------------------------------------------------------- finished runs
def _children(path: Path, prefix: str = "") -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and p.name.startswith(prefix)) if path.is_dir() else []


def candidate_runs(results: str | Path, dataset: str, methods: list[str] | None,
                   seeds: list[int] | None) -> list[tuple[str, int, Path, bool]]:
    """(method, seed, result file, named) for the runs to consider. Named ones (method or seed given
    explicitly) must be eligible; the rest are found in results/ and skipped when they are not."""
    base = Path(results) / "nb201" / dataset
    found_seeds = [int(name[4:]) for name in _children(base, "seed") if name[4:].isdigit()]
    out = []
    for seed in (seeds if seeds is not None else sorted(found_seeds)):
        names = methods if methods is not None else [m for m in _children(base / f"seed{seed}") if m != "supernet"]
        for method in names:
            if seeds is None and methods is not None and not (base / f"seed{seed}" / method).is_dir():
                continue  # a named method need not have run on every seed found
            out.append((method, seed, Path(RESULT_FILE.format(results=results, dataset=dataset, seed=seed,
                                                              method=method)), methods is not None or seeds is not None))
    if methods is not None and seeds is None:
        for method in methods:
            if not any(m == method for m, *_ in out):
                raise NasflowError(f"{base}: no runs of {method}")
    if seeds is not None and methods is None:
        for seed in seeds:
            if not any(s == seed for _, s, *_ in out):
                raise NasflowError(f"{base / f'seed{seed}'}: no runs of seed {seed}")
    return out


def add_runs(results: str | Path = "results", root: str | Path = LEDGER_DIR, dataset: str = "cifar10",
             methods: list[str] | None = None, seeds: list[int] | None = None) -> list[str]:
    """Records for the finished runs; one line each (added / updated / unchanged / skipped). A run
    named explicitly that is not eligible stops everything before any record is written."""
    recorded_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    records, lines, refused = [], [], []
    for method, seed, path, named in candidate_runs(results, dataset, methods, seeds):
        try:
            records.append(make_record(path, recorded_at))
        except NasflowError as e:
            if named:
                refused.append(str(e))
            else:
                lines.append(f"skipped: {e}")
    if refused:
        more = f" (and {len(refused) - 1} more not eligible)" if len(refused) > 1 else ""
        raise NasflowError(refused[0] + more)
    for record in records:
        path, status = write_record(record, root)
        lines.append(f"{status}: {path}")
    if not records and not lines:
        lines.append(f"no finished runs under {Path(results) / 'nb201' / dataset}")
    return lines


# ----------------------------------------------------------------------------- show
SHOW = [("method", "method"), ("dataset", "dataset"), ("seed", "seed"), ("arch", "arch"),
        ("cifar10_test_acc", "C10 test"), ("cifar100_test_acc", "C100 test"),
        ("imagenet16_120_test_acc", "IN16 test"), ("search_cost_gpu_s", "cost (GPU-s)"),
        ("device_name", "device"), ("git_commit", "commit"), ("stale", "stale?")]


def format_ledger(records: pd.DataFrame) -> str:
    """The ledger as a plain text table, one line per record."""
    if records.empty:
        return "the ledger is empty (python -m pipeline_steps ledger add turns finished paper runs into records)"

    def cell(key, v) -> str:
        if key == "search_cost_gpu_s":
            return f"{v:,.0f}"
        if key == "stale":
            return "stale" if v else "-"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    rows = [[cell(k, r[k]) for k, _ in SHOW] for _, r in records.iterrows()]
    head = [label for _, label in SHOW]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *rows])
