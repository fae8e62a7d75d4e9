"""The paper-run command on a toy CPU run: it stops at its budget (exit 3, nothing half-written),
the same command resumes the interrupted training stage and finishes; bad input is one line."""
from __future__ import annotations

import sys

import pytest
import yaml

from project import copy_project, sh, tiny_params

pytestmark = pytest.mark.e2e


def test_budget_stops_then_the_same_command_resumes_and_finishes(tiny_folder, tmp_path):
    project = copy_project(tmp_path / "proj")
    tiny_params(project, tiny_folder)
    quick = project / "params" / "profiles" / "quick.yaml"
    q = yaml.safe_load(quick.read_text())
    q["search"]["epochs"] = 120  # long enough that the budget ends it mid-search
    quick.write_text(yaml.safe_dump(q, sort_keys=False))
    run = (sys.executable, "-m", "pipeline_steps", "paper-run", "--profile", "quick", "--methods", "darts",
           "--seeds", "0", "--cores", "1", "--config", "diagnostics={ranking: {enabled: false}}")
    result = project / "results/nb201/cifar10/seed0/darts/lookup/result.json"

    first = sh(*run, "--budget", "20", cwd=project, check=False)
    assert first.returncode == 3, first.stderr[-2000:]
    assert "budget of 20 s spent" in first.stderr and "pending results/nb201" in first.stderr
    assert not result.exists()
    supernets = list((project / "results/nb201/cifar10/seed0/supernet").glob("*"))
    assert supernets and not list(supernets[0].glob("*.tmp"))  # nothing half-written
    resumable = (supernets[0] / "resume.pt").exists() and not (supernets[0] / "supernet.pt").exists()

    second = sh(*run, cwd=project, check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    assert result.exists()
    log = (supernets[0] / "log.txt").read_text()
    if resumable:
        assert "resuming supernet" in log


def test_bad_input_is_one_line(tmp_path):
    r = sh(sys.executable, "-m", "pipeline_steps", "paper-run", "--methods", "ostr", "--seeds", "0",
           "--data", str(tmp_path / "nowhere"), cwd=tmp_path.parent, check=False)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--data" in r.stderr
