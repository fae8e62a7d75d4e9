"""The command line as a person meets it: help with the user commands apart from the stage
commands, --version, and lookups by arch string or NAS-Bench-201 index."""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from pipeline_steps.pipeline import cli
from pipeline_steps.pipeline.cli_stages import RULE_COMMANDS

ROOT = Path(__file__).resolve().parents[1]
USER_COMMANDS = ("lookup", "check-params", "protocol", "report", "ledger", "paper-run")


def nasflow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline_steps", *args], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, timeout=120)


def listed(help_text: str, heading: str) -> list[str]:
    """The command names of one section of the top-level help."""
    lines = help_text.split(heading, 1)[1].splitlines()[1:]
    names = []
    for line in lines:
        if not line.strip():
            break
        if line.startswith("  ") and not line.startswith("   "):
            names.append(line.split()[0])
    return names


def test_bare_nasflow_prints_help_with_user_commands_apart(monkeypatch):
    r = nasflow()
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith("usage: nasflow ")
    user, stage = listed(r.stdout, "user commands:"), listed(r.stdout, "stage commands")
    assert set(USER_COMMANDS) <= set(user)
    assert set(stage) == set(RULE_COMMANDS) and not set(user) & set(stage)
    assert r.stdout.index("user commands:") < r.stdout.index("stage commands")
    assert "--spec JSON" in r.stdout.split("stage commands", 1)[1].splitlines()[0]
    monkeypatch.setenv("COLUMNS", "80")                         # the width argparse gives a pipe
    assert cli.build_parser().format_help() == r.stdout        # the same as `nasflow -h`


def test_version_is_the_package_version(monkeypatch):
    r = nasflow("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"nasflow {metadata.version('nasflow')}"

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)   # a source tree that was never installed
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert cli.version() == f"{declared} (not installed)"


def lookup(capsys, *args: str) -> str:
    assert cli.main(["lookup", "--source", "table", *args]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("index", [0, 1, 6111, 15624])
def test_lookup_by_index_equals_lookup_by_arch_string(capsys, index):
    row = json.loads(lookup(capsys, str(index), "--json"))
    assert row["nb201_index"] == index
    assert json.loads(lookup(capsys, row["arch_str"], "--json")) == row
    assert lookup(capsys, str(index)) == lookup(capsys, row["arch_str"])
    assert f"nb201 index     {index}\n" in lookup(capsys, str(index))


def test_lookup_json_is_one_object(capsys):
    row = json.loads(lookup(capsys, "6111", "--json"))
    assert row["rank"] == 1 and row["cifar10_test_acc"] == pytest.approx(94.37, abs=0.005)   # the best cell
    assert row["arch_str"] == "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
    assert set(row) == {"arch_str", "nb201_index", "rank", "cifar10_valid_acc", "cifar10_test_acc",
                        "cifar100_valid_acc", "cifar100_test_acc", "imagenet16_120_valid_acc", "imagenet16_120_test_acc"}


@pytest.mark.parametrize("index", ["15625", "-1"])
def test_bad_index_is_one_line_naming_it_and_the_range(index):
    r = nasflow("lookup", index)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == f"nasflow: error: NAS-Bench-201 index {index} is out of range: valid indices are 0..15624"


def test_run_passes_this_machines_cores_and_gpus_to_snakemake(monkeypatch):
    from pipeline_steps.pipeline import launch

    monkeypatch.setenv("NASFLOW_CORES", "3")
    monkeypatch.setenv("NASFLOW_GPUS", "2")
    monkeypatch.setenv("NASFLOW_GPU_SLOTS", "4")
    cmd = launch.snakemake_command("params", ["-n"])
    assert cmd[1:] == ["-m", "snakemake", "--profile", "workflow/profiles/default", "--cores", "3",
                       "--resources", "gpu=8", "-n"]
    own = launch.snakemake_command("params", ["--cores", "1"])
    assert own.count("--cores") == 1 and own[-2:] == ["--cores", "1"]  # the user's own wins
