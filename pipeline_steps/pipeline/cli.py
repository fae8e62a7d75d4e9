"""Command line: `nasflow <command>` (or `python -m pipeline_steps <command>`). People run the user
commands (cli_user.py, and `report`); the Snakemake rules run the stage commands (cli_stages.py),
each with a `--spec JSON`. `nasflow` alone prints the help. A NasflowError is printed as one line
and exits with status 2."""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from ..common.errors import NasflowError
from . import cli_stages, cli_user
from .cli_user import parse_overrides  # noqa: F401  (part of this module's interface)
from .job_guard import StageStopped, stop_on_sigterm, watch_snakemake

STAGE_COMMANDS = cli_stages.STAGE_COMMANDS
DESCRIPTION = "Weight-sharing NAS methods as cached, reproducible Snakemake stages."


def version() -> str:
    """The installed package's version; in a source tree that was never installed, pyproject's."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("nasflow")
    except PackageNotFoundError:
        pass
    try:
        import tomllib

        text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
        return f"{tomllib.loads(text)['project']['version']} (not installed)"
    except (ImportError, OSError, KeyError, ValueError):
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """The top-level parser: its help lists the user commands apart from the stage commands."""

    commands: argparse._SubParsersAction | None = None

    def format_help(self) -> str:
        if self.commands is not None:  # built here, so a command added anywhere is listed
            self.description = DESCRIPTION + "\n\n" + _command_list(self.commands)
        return super().format_help()


def _command_list(commands: argparse._SubParsersAction) -> str:
    helps = {a.dest: a.help or "" for a in commands._choices_actions}
    user = [n for n in helps if n not in cli_stages.RULE_COMMANDS]
    stage = [n for n in helps if n in cli_stages.RULE_COMMANDS]
    width = max(map(len, helps), default=0) + 4
    wrap = textwrap.TextWrapper(width=100, initial_indent="", subsequent_indent=" " * width)

    def block(names):
        return "\n".join(wrap.fill(f"  {n:{width - 2}}{helps[n]}") for n in names)

    return ("user commands:\n" + block(user)
            + "\n\nstage commands (what the Snakemake rules run, each with --spec JSON; not needed by hand):\n"
            + block(stage) + "\n\n`nasflow <command> -h` shows a command's options.")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nasflow", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                usage="%(prog)s [-h] [--version] [--params-dir DIR] [--threads N] <command> ...")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    p.add_argument("--params-dir", default="params", metavar="DIR",
                   help="where nasflow.yaml and profiles/ live (default: params)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch (the rule's `threads`, so parallel jobs do not oversubscribe)")
    # the commands are listed by _Parser.format_help in two groups, so argparse's own list is hidden
    sub = p.add_subparsers(dest="command", metavar="<command>", help=argparse.SUPPRESS,
                           parser_class=argparse.ArgumentParser)
    cli_user.add_commands(sub)
    cli_stages.add_commands(sub)
    p.commands = sub
    return p


def run(args: argparse.Namespace) -> None:
    if args.command in STAGE_COMMANDS:
        cli_stages.run(args)
    else:
        cli_user.HANDLERS[args.command](args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    i = _command_index(argv)
    if i is not None and argv[i] == "run":  # what follows `run` is Snakemake's, options included
        args = parser.parse_args(argv[:i + 1])
        args.snakemake_args = argv[i + 1:]
    else:
        args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
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


def _command_index(argv: list[str]) -> int | None:
    """Where the command name stands, after the global options and their values."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 1 if "=" in argv[i] or argv[i] in ("-h", "--help", "--version") else 2
    return i if i < len(argv) else None


def _end_runs(stage: bool, status: str) -> None:
    if stage and "mlflow" in sys.modules:
        from .tracking import end_open_runs

        end_open_runs(status)
