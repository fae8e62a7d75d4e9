"""The stage commands the Snakemake rules call, each with its `--spec JSON` (see workflow/rules/),
and `report`, which a person runs too (without --spec: the runs params/ asks for)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..common.errors import NasflowError
from ..common.progress import heartbeat_interval, log_line

# what `nasflow -h` lists as stage commands; `report` is listed with the user commands
RULE_COMMANDS = ("supernet", "method-stage", "derive", "benchmark-lookup", "retrain", "rank-checkpoint", "ranking")
STAGE_COMMANDS = (*RULE_COMMANDS, "report")


def spec_json(text: str) -> dict:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise NasflowError(f"--spec is not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(spec, dict):
        raise NasflowError("--spec must be a JSON object")
    return spec


def runtime_settings(params_dir: str) -> dict:
    """Runtime settings: from the Snakefile's environment, else from params/ directly."""
    if "NASFLOW_RUNTIME" in os.environ:
        return json.loads(os.environ["NASFLOW_RUNTIME"])
    from .config import load_params
    from .plan import Plan

    return Plan(load_params(params_dir)).runtime()


def add_commands(sub) -> None:
    s = sub.add_parser("supernet", help="train the shared supernet")
    s.add_argument("--spec", required=True, type=spec_json)
    s.add_argument("--checkpoint", required=True, type=Path)
    s.add_argument("--metrics", required=True, type=Path)
    s.add_argument("--history", required=True, type=Path)

    s = sub.add_parser("method-stage", help="a method's own stage on a supernet state, e.g. DARTS-PT selection")
    s.add_argument("--spec", required=True, type=spec_json)
    s.add_argument("--start", required=True, type=Path, help="the state it continues from")
    s.add_argument("--checkpoint", required=True, type=Path)
    s.add_argument("--metrics", required=True, type=Path)
    s.add_argument("--history", required=True, type=Path)

    s = sub.add_parser("derive", help="derive the architecture from a method's final state")
    s.add_argument("--spec", required=True, type=spec_json)
    s.add_argument("--state", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("benchmark-lookup", help="look the derived cell up in NAS-Bench-201")
    s.add_argument("--spec", required=True, type=spec_json)
    s.add_argument("--arch", required=True, type=Path)
    s.add_argument("--stage-metrics", required=True, type=Path, nargs="+", help="metrics.json of each training stage")
    s.add_argument("--history", required=True, type=Path, help="history.json of the last training stage")
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("retrain", help="train the derived network from scratch")
    s.add_argument("--spec", required=True, type=spec_json)
    s.add_argument("--arch", required=True, type=Path)
    s.add_argument("--stage-metrics", required=True, type=Path, nargs="+", help="metrics.json of each training stage")
    s.add_argument("--model", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("rank-checkpoint", help="Kendall tau / Spearman rho of supernet vs benchmark accuracy "
                                               "of one training stage's state")
    s.add_argument("--spec", required=True, type=spec_json)
    s.add_argument("--state", required=True, type=Path, help="the stage's supernet.pt")
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("ranking", help="a method's ranking diagnostic from its stages' rankings")
    s.add_argument("--spec", required=True, type=spec_json)
    s.add_argument("--stage-rankings", required=True, type=Path, nargs="+", help="ranking.json of each training stage")
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("report", help="rebuild results/REPORT.md from every finished run (the runs params/ asks "
                                      "for; missing ones listed as missing)")
    s.add_argument("--spec", default=None, type=spec_json, help="the report rule's runs (default: from params/)")
    s.add_argument("--results-dir", default="results", type=Path)


def run(args: argparse.Namespace) -> None:
    heartbeat_interval()  # a bad NASFLOW_HEARTBEAT_S stops the stage before any work
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from . import stages

    runtime = runtime_settings(args.params_dir)
    if args.command == "supernet":
        stages.supernet(args.spec, runtime, args.checkpoint, args.metrics, args.history)
    elif args.command == "method-stage":
        stages.method_stage(args.spec, runtime, args.start, args.checkpoint, args.metrics, args.history)
    elif args.command == "derive":
        stages.derive(args.spec, runtime, args.state, args.out)
    elif args.command == "benchmark-lookup":
        stages.lookup(args.spec, runtime, args.arch, args.stage_metrics, args.history, args.out)
    elif args.command == "retrain":
        stages.retrain(args.spec, runtime, args.arch, args.stage_metrics, args.model, args.out)
    elif args.command == "rank-checkpoint":
        from .diagnostics import rank_checkpoint

        rank_checkpoint(args.spec, runtime, args.state, args.out)
        log_line(checkpoint_ranking_line(args.spec, json.loads(args.out.read_text())))
    elif args.command == "ranking":
        from .diagnostics import ranking

        ranking(args.spec, args.stage_rankings, args.out)
        log_line(ranking_line(args.spec, json.loads(args.out.read_text())))
    elif args.command == "report":
        from ..report.build import report
        from .tracking import log_report

        if args.spec is None:
            from .config import load_params
            from .plan import Plan

            args.spec = Plan(load_params(args.params_dir)).report_spec()
        log_report(runtime, args.spec, args.results_dir, report(args.spec, runtime, args.results_dir))
        expected = [e["file"] for e in args.spec.get("expected", [])] or args.spec["results"]
        done = sum(Path(f).exists() for f in expected)
        log_line(f"report: wrote {args.results_dir / 'REPORT.md'} and REPORT.html from {done} of {len(expected)} "
                 "expected runs")


def checkpoint_ranking_line(spec: dict, record: dict) -> str:
    who = f"{spec['method']} {spec['of']}" if "method" in spec else f"supernet {spec['supernet_key']}"
    tau = "-" if record["kendall_tau"] is None else f"{record['kendall_tau']:.3f}"
    return (f"ranking {who} nb201 {spec['dataset']} seed{spec['seed']}: Kendall tau of {record['metric']} {tau} "
            f"over {record['n']} cells")


def ranking_line(spec: dict, result: dict) -> str:
    """The ranking stage's log line: Kendall tau per training stage ('-' where one cell is left)."""
    taus = ", ".join(f"{p['stage']} {p['kendall_tau']:.3f}" if p["kendall_tau"] is not None else f"{p['stage']} -"
                     for p in result["per_stage"])
    cells = max((p["n"] for p in result["per_stage"]), default=0)
    return (f"ranking {spec['method']} nb201 {spec['dataset']} seed{spec['seed']}: Kendall tau of "
            f"{result['metric']} per stage: {taus} (up to {cells} cells)")
