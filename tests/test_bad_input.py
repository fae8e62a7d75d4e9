"""Bad input: one clear line naming the bad value, exit status 2, no partial outputs."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_steps.config import load_params
from pipeline_steps.errors import NasflowError
from pipeline_steps.plan import Plan

ROOT = Path(__file__).resolve().parents[1]


def nasflow(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline_steps", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("override, needle", [
    ({"datasets": ["svhn"]}, "datasets.0 = 'svhn'"),
    ({"search": {"epochs": -3}}, "search.epochs = -3"),
    ({"profile": "huge"}, "unknown profile 'huge'"),
    ({"device": "tpu"}, "device = 'tpu'"),
    ({"search": {"epoch": 3}}, "unknown parameter in search"),
    ({"methods": ["nope"]}, "methods.0 = 'nope'"),
])
def test_bad_params_name_the_value(override, needle):
    with pytest.raises(NasflowError) as err:
        load_params(ROOT / "params", override)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_cli_unknown_arch_is_one_line_exit_2():
    r = nasflow("lookup", "|nor_conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "nor_conv_9x9" in r.stderr and "Traceback" not in r.stderr


def test_cli_missing_benchmark_file(tmp_path):
    r = nasflow("lookup", "--source", "table", "--path", str(tmp_path / "missing.parquet"),
                "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    assert r.returncode == 2 and "missing.parquet" in r.stderr and "Traceback" not in r.stderr


def test_cli_lookup_prints_the_row():
    r = nasflow("lookup", "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|")
    assert r.returncode == 0, r.stderr
    assert "54.30" in r.stdout and "15.61" in r.stdout and "16.32" in r.stdout


def test_stage_with_missing_dataset_leaves_nothing(tmp_path):
    params = tmp_path / "params"
    shutil.copytree(ROOT / "params", params)
    cfg = yaml.safe_load((params / "nasflow.yaml").read_text())
    cfg["data"].update(root=str(tmp_path / "no-data"), download=False)
    cfg["tracking"]["enabled"] = False
    (params / "nasflow.yaml").write_text(yaml.safe_dump(cfg))
    spec = Plan(load_params(params)).supernet_spec("darts", "nb201", "cifar10", 0)
    out = tmp_path / "out"
    r = nasflow("--params-dir", str(params), "supernet", "--spec", json.dumps(spec),
                "--checkpoint", str(out / "supernet.pt"), "--metrics", str(out / "m.json"),
                "--history", str(out / "h.json"))
    assert r.returncode == 2, r.stderr
    assert "no-data" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_snakemake_rejects_bad_params_before_running(tmp_path):
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config", "seeds=[-1]"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0
    assert "seeds.0 = -1" in r.stderr + r.stdout
