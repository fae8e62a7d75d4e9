"""The commands people run: run, lookup, check-params, protocol, ledger, paper-run (and `report`,
which lives in cli_stages because the report rule runs it too)."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ..common.errors import NasflowError

ARCH_EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def add_commands(sub) -> None:
    s = sub.add_parser("lookup", help="print a cell's NAS-Bench-201 accuracies and rank, by arch string or index")
    s.add_argument("arch", metavar="ARCH|INDEX",
                   help=f"an arch string, e.g. '{ARCH_EXAMPLE}', or the cell's official index (0..15624)")
    s.add_argument("--json", action="store_true", help="print the row as one JSON object")
    s.add_argument("--source", choices=["table", "official", "nats"], default=None,
                   help="benchmark source (default: benchmark.source in params)")
    s.add_argument("--path", default=None, help="benchmark file for official / nats")

    sub.add_parser("check-params", help="check params/, the data, the benchmark file and the tracking backend as a "
                                        "run would before starting, and print the resolved parameters")

    s = sub.add_parser("run", help="the pipeline: Snakemake with this machine's cores and GPUs "
                                   "(params/local.yaml, NASFLOW_CORES, NASFLOW_GPUS); what `dvc repro` runs")
    s.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="passed on to Snakemake, e.g. -n or --config ...")

    s = sub.add_parser("protocol", help="per method and stage, the training settings a run would use "
                                        "(epochs, batch, LR schedule, optimisers, op set, data split)")
    s.add_argument("--profile", default=None, help="quick | paper (default: profile in params)")
    s.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides as for snakemake --config, e.g. method.hep_nas.preset=code spaces='[nb201, darts]'")
    s.add_argument("--methods", nargs="*", default=None, help="default: every method")
    s.add_argument("--json", action="store_true", help="print JSON rows instead of text")

    s = sub.add_parser("ledger", help="records of finished paper-profile NAS-Bench-201 GPU runs, kept in git")
    ledger = s.add_subparsers(dest="ledger_command", required=True)
    a = ledger.add_parser("add", help="turn finished runs into ledger records (runs not eligible are skipped, "
                                      "or refused when named explicitly)")
    a.add_argument("--results", default="results", type=Path, help="results directory (default: results)")
    a.add_argument("--methods", nargs="+", default=None, help="default: every method with runs in results/")
    a.add_argument("--seeds", nargs="+", type=int, default=None, help="default: every seed with runs in results/")
    a.add_argument("--dataset", default="cifar10", help="the search dataset (default: cifar10)")
    a.add_argument("--ledger", default="ledger", type=Path, help="ledger directory (default: ledger)")
    a = ledger.add_parser("show", help="print the ledger: one line per record, stale ones marked")
    a.add_argument("--ledger", default="ledger", type=Path, help="ledger directory (default: ledger)")

    s = sub.add_parser("paper-run", help="paper-profile NB201 searches through Snakemake within a time budget "
                                         "(stops cleanly; the same command resumes)")
    s.add_argument("--methods", nargs="+", required=True)
    s.add_argument("--seeds", nargs="+", type=int, required=True)
    s.add_argument("--budget", type=float, default=None, help="seconds; then stop (exit 3, resumable)")
    s.add_argument("--data", default=None, help="CIFAR-10 as an image folder or torchvision files (default: data.root)")
    s.add_argument("--jobs", type=int, default=1, help="searches at once on the GPU (default 1)")
    s.add_argument("--cores", type=int, default=None, help="Snakemake --cores (default: all)")
    s.add_argument("--profile", default="paper", help=argparse.SUPPRESS)
    s.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="more Snakemake --config overrides")


def parse_overrides(items: list[str]) -> dict:
    """`a.b=value` pairs (values read as YAML) -> a nested dict."""
    import yaml

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise NasflowError(f"override {item!r} is not KEY=VALUE (e.g. seeds='[0, 1]')")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise NasflowError(f"override {item!r}: {value!r} is not a YAML value") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = parsed
    return out


def cell_of(bench, text: str) -> str:
    """The arch string `text` names: itself, or the cell at that official index."""
    if not re.fullmatch(r"\s*[+-]?\d+\s*", text):
        return text
    index, table = int(text), bench.table
    hits = table.index[table["nb201_index"] == index]
    if len(hits):
        return hits[0]
    first, last = int(table["nb201_index"].min()), int(table["nb201_index"].max())
    if first <= index <= last:
        raise NasflowError(f"NAS-Bench-201 index {index} is not in the benchmark table")
    raise NasflowError(f"NAS-Bench-201 index {index} is out of range: valid indices are {first}..{last}")


def lookup(args: argparse.Namespace) -> None:
    from ..evaluation.benchmark import format_row, load_benchmark

    source, path = args.source, args.path
    if source is None:
        try:
            from .config import load_params

            b = load_params(args.params_dir)["benchmark"]
            source, path = b["source"], path or b["path"]
        except NasflowError:
            source = "table"  # outside a project: the shipped table
    bench = load_benchmark(source, path)
    row = bench.lookup(cell_of(bench, args.arch))
    print(json.dumps(row) if args.json else format_row(row))


def check_params(args: argparse.Namespace) -> None:
    from .preflight import preflight

    plan = preflight(Path(args.params_dir).resolve().parent)
    print(json.dumps(plan.cfg, indent=2))


def run_pipeline(args: argparse.Namespace) -> None:
    from .launch import run

    run(args.params_dir, args.snakemake_args)


def protocol(args: argparse.Namespace) -> None:
    from .config import load_params
    from .protocol import format_rows, protocol_rows

    overrides = parse_overrides(args.config)
    if args.profile:
        overrides["profile"] = args.profile
    rows = protocol_rows(load_params(args.params_dir, overrides), methods=args.methods)
    print(json.dumps(rows, indent=1) if args.json else format_rows(rows))


def ledger(args: argparse.Namespace) -> None:
    from ..report.ledger import add_runs, format_ledger, load_ledger

    if args.ledger_command == "add":
        for line in add_runs(args.results, args.ledger, args.dataset, args.methods, args.seeds):
            print(line)
    else:
        print(format_ledger(load_ledger(args.ledger)))


def paper_run(args: argparse.Namespace) -> None:
    from .paper_run import paper_run as run

    raise SystemExit(run(args.methods, args.seeds, args.budget, args.data, args.profile, args.cores, args.jobs,
                         args.config))


HANDLERS = {"lookup": lookup, "check-params": check_params, "run": run_pipeline, "protocol": protocol,
            "ledger": ledger, "paper-run": paper_run}
