"""Command line: `python -m pipeline_steps <stage> ...` (what the Snakemake rules call) and
`nasflow lookup '<arch>'`. A NasflowError is printed as one line and exits with status 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import NasflowError
from .job_guard import StageStopped, stop_on_sigterm, watch_snakemake


def _runtime(params_dir: str) -> dict:
    """Runtime settings: from the Snakefile's environment, else from params/ directly."""
    if "NASFLOW_RUNTIME" in os.environ:
        return json.loads(os.environ["NASFLOW_RUNTIME"])
    from .config import load_params
    from .plan import Plan

    return Plan(load_params(params_dir)).runtime()


def _spec(text: str) -> dict:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise NasflowError(f"--spec is not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(spec, dict):
        raise NasflowError("--spec must be a JSON object")
    return spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nasflow", description="Weight-sharing NAS methods as cached stages.")
    p.add_argument("--params-dir", default="params", help="where nasflow.yaml and profiles/ live (default: params)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (the rule's `threads`, so parallel jobs do not oversubscribe)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("supernet", help="train the shared supernet (stage)")
    s.add_argument("--spec", required=True, type=_spec)
    s.add_argument("--checkpoint", required=True, type=Path)
    s.add_argument("--metrics", required=True, type=Path)
    s.add_argument("--history", required=True, type=Path)

    s = sub.add_parser("method-stage", help="a method's own stage on a supernet state, e.g. DARTS-PT selection (stage)")
    s.add_argument("--spec", required=True, type=_spec)
    s.add_argument("--start", required=True, type=Path, help="the state it continues from")
    s.add_argument("--checkpoint", required=True, type=Path)
    s.add_argument("--metrics", required=True, type=Path)
    s.add_argument("--history", required=True, type=Path)

    s = sub.add_parser("derive", help="derive the architecture from a method's final state (stage)")
    s.add_argument("--spec", required=True, type=_spec)
    s.add_argument("--state", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("benchmark-lookup", help="look the derived cell up in NAS-Bench-201 (stage)")
    s.add_argument("--spec", required=True, type=_spec)
    s.add_argument("--arch", required=True, type=Path)
    s.add_argument("--stage-metrics", required=True, type=Path, nargs="+", help="metrics.json of each training stage")
    s.add_argument("--history", required=True, type=Path, help="history.json of the last training stage")
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("retrain", help="train the derived DARTS-space network from scratch (stage)")
    s.add_argument("--spec", required=True, type=_spec)
    s.add_argument("--arch", required=True, type=Path)
    s.add_argument("--stage-metrics", required=True, type=Path, nargs="+", help="metrics.json of each training stage")
    s.add_argument("--model", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("ranking", help="Kendall tau / Spearman rho of supernet vs benchmark accuracy per stage (stage)")
    s.add_argument("--spec", required=True, type=_spec)
    s.add_argument("--states", required=True, type=Path, nargs="+", help="supernet.pt of each training stage")
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("report", help="tables and figures over every finished run (stage; without --spec: "
                                      "the runs params/ asks for, missing ones listed as missing)")
    s.add_argument("--spec", default=None, type=_spec)
    s.add_argument("--results-dir", default="results", type=Path)

    s = sub.add_parser("lookup", help="print the NAS-Bench-201 row of an arch string")
    s.add_argument("arch", help="e.g. '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|'")
    s.add_argument("--source", choices=["table", "official", "nats"], default=None,
                   help="benchmark source (default: benchmark.source in params)")
    s.add_argument("--path", default=None, help="benchmark file for official / nats")

    sub.add_parser("check-params", help="validate params/ and print the resolved parameters")

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

    s = sub.add_parser("protocol", help="per method and stage, the training settings a run would use "
                                        "(epochs, batch, LR schedule, optimisers, op set, data split)")
    s.add_argument("--profile", default=None, help="quick | paper (default: profile in params)")
    s.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides as for snakemake --config, e.g. method.hep_nas.preset=code spaces='[nb201, darts]'")
    s.add_argument("--methods", nargs="*", default=None, help="default: every method")
    s.add_argument("--json", action="store_true", help="print JSON rows instead of text")
    return p


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


def run(args: argparse.Namespace) -> None:
    if args.command == "lookup":
        from .benchmark import format_row, load_benchmark

        source, path = args.source, args.path
        if source is None:
            try:
                from .config import load_params

                b = load_params(args.params_dir)["benchmark"]
                source, path = b["source"], path or b["path"]
            except NasflowError:
                source = "table"  # outside a project: the shipped table
        print(format_row(load_benchmark(source, path).lookup(args.arch)))
        return
    if args.command == "check-params":
        from .config import load_params

        print(json.dumps(load_params(args.params_dir), indent=2))
        return
    if args.command == "ledger":
        from .ledger import add_runs, format_ledger, load_ledger

        if args.ledger_command == "add":
            for line in add_runs(args.results, args.ledger, args.dataset, args.methods, args.seeds):
                print(line)
        else:
            print(format_ledger(load_ledger(args.ledger)))
        return
    if args.command == "paper-run":
        from .paper_run import paper_run

        raise SystemExit(paper_run(args.methods, args.seeds, args.budget, args.data, args.profile, args.cores,
                                   args.jobs, args.config))
    if args.command == "protocol":
        from .config import load_params
        from .protocol import format_rows, protocol_rows

        overrides = parse_overrides(args.config)
        if args.profile:
            overrides["profile"] = args.profile
        rows = protocol_rows(load_params(args.params_dir, overrides), methods=args.methods)
        print(json.dumps(rows, indent=1) if args.json else format_rows(rows))
        return

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from . import stages

    runtime = _runtime(args.params_dir)
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
    elif args.command == "ranking":
        from .diagnostics import ranking

        ranking(args.spec, runtime, args.states, args.out)
    elif args.command == "report":
        from .report import report

        if args.spec is None:
            from .config import load_params
            from .plan import Plan

            args.spec = Plan(load_params(args.params_dir)).report_spec()
        report(args.spec, runtime, args.results_dir)


STAGE_COMMANDS = ("supernet", "method-stage", "derive", "benchmark-lookup", "retrain", "ranking", "report")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stage = args.command in STAGE_COMMANDS
    if stage:
        stop_on_sigterm()
        if "NASFLOW_RUNTIME" in os.environ:  # started by a rule
            watch_snakemake()
    try:
        run(args)
    except NasflowError as e:
        _end_runs(stage, "FAILED")
        print(f"nasflow: error: {e}", file=sys.stderr)
        return 2
    except Exception:
        _end_runs(stage, "FAILED")
        raise
    except (KeyboardInterrupt, StageStopped) as e:  # Ctrl-C, SIGTERM (Snakemake, SLURM, a lost parent)
        _end_runs(stage, "KILLED")
        print(f"nasflow: stopped ({e or 'interrupted'}); finished epochs are kept", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 143
    return 0


def _end_runs(stage: bool, status: str) -> None:
    if stage and "mlflow" in sys.modules:
        from .tracking import end_open_runs

        end_open_runs(status)
