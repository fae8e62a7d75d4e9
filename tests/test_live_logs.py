"""Stage logs while a stage runs: a line per epoch, a heartbeat within an epoch, a line from every
non-training stage, all flushed to a redirected stderr as they happen."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_steps.common import progress
from pipeline_steps.common.atomic import write_json
from pipeline_steps.common.errors import NasflowError
from pipeline_steps.data.search_data import SearchData
from pipeline_steps.evaluation.retrain import NB201_PROTOCOL
from pipeline_steps.pipeline import cli, stages
from pipeline_steps.pipeline.config import load_params
from pipeline_steps.pipeline.plan import Plan
from pipeline_steps.pipeline.stage_run import data_settings, optimisation
from pipeline_steps.spaces import get_space
from pipeline_steps.supernet.state import init_state
from pipeline_steps.supernet.train import train_epoch

ROOT = Path(__file__).resolve().parents[1]
BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
HEARTBEAT = re.compile(r"^(?P<label>.+) step (?P<done>\d+)/(?P<total>\d+) loss=\S+ [\d.]+ images/s ETA \S+$")

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_plan(folder: Path) -> Plan:
    return Plan(load_params(ROOT / "params", {
        "seeds": [0], "methods": ["darts"], "spaces": ["nb201"], "datasets": ["cifar10"],
        "data": {"root": str(folder), "source": "folder", "download": False, "image_size": 8, "max_images": None},
        "search": {"epochs": 1, "batch_size": 16}, "space": {"nb201": {"channels": 4, "cells_per_stage": 1}},
        "diagnostics": {"ranking": {"enabled": True, "archs": 6, "images": 32}},
        "tracking": {"enabled": False}, "device": "cpu"}))


def tiny_runtime(plan: Plan) -> dict:
    """What the Snakefile passes in NASFLOW_RUNTIME: here CPU, the plain step, no MLflow."""
    return {**plan.runtime(), "device": "cpu", "captured_step": "off", "channels_last": "off",
            "tracking": {"enabled": False}}


def heartbeats(text: str) -> list[re.Match]:
    return [m for m in map(HEARTBEAT.match, text.splitlines()) if m]


# ----------------------------------------------------------------------------- the setting
def test_heartbeat_interval_setting(monkeypatch):
    monkeypatch.delenv(progress.HEARTBEAT_ENV, raising=False)
    assert progress.heartbeat_interval() == progress.DEFAULT_HEARTBEAT_S == 60.0
    monkeypatch.setenv(progress.HEARTBEAT_ENV, "2.5")
    assert progress.heartbeat_interval() == 2.5
    monkeypatch.setenv(progress.HEARTBEAT_ENV, "0")
    assert progress.heartbeat_interval() is None          # off
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(progress.HEARTBEAT_ENV, bad)
        with pytest.raises(NasflowError, match=f"NASFLOW_HEARTBEAT_S='{bad}'"):
            progress.heartbeat_interval()


def test_loss_is_read_only_when_a_line_is_printed(capsys):
    reads = []

    def measure():
        reads.append(1)
        return 1.5, 8 * len(reads)

    quiet = progress.StepProgress("x", 500, measure, interval=3600.0)
    for _ in range(500):
        quiet.step()
    quiet.close()
    assert reads == [] and capsys.readouterr().err == ""   # the step loop never syncs for nothing

    every = progress.StepProgress("x", 5, measure, interval=1e-9)
    for _ in range(5):
        every.step()
    lines = capsys.readouterr().err.splitlines()
    assert len(reads) == len(lines) == 5
    assert [m["done"] for m in heartbeats("\n".join(lines))] == ["1", "2", "3", "4", "5"]
    assert progress.duration(45) == "45s" and progress.duration(725) == "12m05s" and progress.duration(10920) == "3h02m"


# ----------------------------------------------------------------------------- the training loop
@pytest.mark.parametrize("captured", ["off", "eager"])
def test_heartbeat_within_a_supernet_epoch(tiny_folder, monkeypatch, capsys, captured):
    plan = tiny_plan(tiny_folder)
    spec, runtime = plan.supernet_spec("darts", "nb201", "cifar10", 0), tiny_runtime(plan)
    data = SearchData(data_settings(spec, runtime), 16, "cpu")
    state = init_state(get_space("nb201", spec["space_settings"]), data.num_classes,
                       optimisation(spec["search"]), 0, "cpu")
    monkeypatch.setenv(progress.HEARTBEAT_ENV, "1e-6")
    record = train_epoch(state, data, "bilevel", captured=captured, label="supernet")
    beats = heartbeats(capsys.readouterr().err)
    assert data.steps_per_epoch > 2 and len(beats) == data.steps_per_epoch
    assert beats[0]["label"] == "supernet epoch 1" and beats[0]["total"] == str(data.steps_per_epoch)
    assert int(beats[0]["done"]) < data.steps_per_epoch        # printed within the epoch, not after it
    last_loss = float(re.search(r"loss=(\S+)", beats[-1].group(0))[1])
    assert last_loss == pytest.approx(record["train_loss"], rel=1e-3)   # the running mean of the epoch

    monkeypatch.setenv(progress.HEARTBEAT_ENV, "60")          # the default: short epochs print no heartbeat
    train_epoch(state, data, "bilevel", captured=captured, label="supernet")
    assert heartbeats(capsys.readouterr().err) == []


# ----------------------------------------------------------------------------- retrain, as the rule runs it
def test_retrain_stage_logs_while_it_runs(tiny_folder, tmp_path):
    """The retrain command with its output redirected to log.txt (as the rule does): after one epoch
    the log holds that epoch's line, with heartbeats before it, while the process still runs."""
    plan = tiny_plan(tiny_folder)
    settings = dataclasses.replace(NB201_PROTOCOL, epochs=1000, batch_size=16, channels=4, layers=1)
    spec = {**plan.retrain_spec("darts", "nb201", "cifar10", 0), "retrain": dataclasses.asdict(settings)}
    out = tmp_path / "retrain"
    out.mkdir()
    write_json(tmp_path / "arch.json", {"arch": BEST, "epoch": 1, "wall_time_s": 0.1})
    write_json(tmp_path / "metrics.json", {"key": "k", "stage": "supernet", "wall_time_s": 1.0})
    env = {**os.environ, "NASFLOW_RUNTIME": json.dumps(tiny_runtime(plan)),
           progress.HEARTBEAT_ENV: "0.05", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipeline_steps", "--threads", "1", "retrain", "--spec", json.dumps(spec),
           "--arch", str(tmp_path / "arch.json"), "--stage-metrics", str(tmp_path / "metrics.json"),
           "--model", str(out / "model.pt"), "--out", str(out / "result.json")]
    log = out / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while "retrain epoch 1/1000 " not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        assert proc.poll() is None                                   # still training: written live
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    lines = text.splitlines()
    assert lines[0].startswith("retrain: ") and "1000 epochs of 15 steps" in lines[0]
    epoch_line = next(i for i, line in enumerate(lines) if line.startswith("retrain epoch 1/1000 "))
    assert re.search(r"train_loss=\S+ train_acc=\S+ test_loss=\S+ test_acc=\S+ [\d.]+s ETA \S+$", lines[epoch_line])
    assert any(m["label"] == "retrain epoch 1" for m in heartbeats("\n".join(lines[:epoch_line])))
    assert proc.returncode == 143 and "stopped" in log.read_text()  # SIGTERM keeps the finished epochs


# ----------------------------------------------------------------------------- the other stages
def test_every_other_stage_prints_what_it_did(tiny_folder, tmp_path, monkeypatch, capsys):
    plan = tiny_plan(tiny_folder)
    runtime = tiny_runtime(plan)
    monkeypatch.chdir(tmp_path)  # the rules' relative results/ layout
    monkeypatch.setenv("NASFLOW_RUNTIME", json.dumps(runtime))
    sn = Path(plan.stage_dirs("darts", "nb201", "cifar10", 0)[-1])
    run_dir = Path("results/nb201/cifar10/seed0/darts")
    stages.supernet(plan.supernet_spec("darts", "nb201", "cifar10", 0), runtime, sn / "supernet.pt",
                    sn / "metrics.json", sn / "history.json")
    assert "supernet epoch 1 " in capsys.readouterr().err

    def command(*argv: str) -> str:
        args = cli.build_parser().parse_args(list(argv))
        cli.run(args)
        out = capsys.readouterr()
        assert out.out == ""
        return out.err

    spec = lambda s: json.dumps(s)  # noqa: E731
    said = command("derive", "--spec", spec(plan.derive_spec("darts", "nb201", "cifar10", 0)),
                   "--state", str(sn / "supernet.pt"), "--out", str(run_dir / "derive/arch.json"))
    arch = json.loads((run_dir / "derive/arch.json").read_text())["arch"]
    assert said.startswith("derive darts nb201 cifar10 seed0: " + arch)

    said = command("benchmark-lookup", "--spec", spec(plan.lookup_spec("darts", "nb201", "cifar10", 0)),
                   "--arch", str(run_dir / "derive/arch.json"), "--stage-metrics", str(sn / "metrics.json"),
                   "--history", str(sn / "history.json"), "--out", str(run_dir / "lookup/result.json"))
    assert said.startswith(f"lookup darts nb201 cifar10 seed0: {arch} (index ") and "of 15625" in said

    key = json.loads((sn / "metrics.json").read_text())["key"]
    said = command("rank-checkpoint", "--spec", spec(plan.checkpoint_ranking_spec("supernet", "cifar10", 0, key)),
                   "--state", str(sn / "supernet.pt"), "--out", str(sn / "ranking.json"))
    assert re.match(rf"ranking supernet {key} nb201 cifar10 seed0: Kendall tau of cifar10_test_acc -?\d\.\d{{3}} "
                    r"over 6 cells$", said.strip())
    said = command("ranking", "--spec", spec(plan.ranking_spec("darts", "cifar10", 0)),
                   "--stage-rankings", str(sn / "ranking.json"), "--out", str(run_dir / "ranking/result.json"))
    assert re.match(r"ranking darts nb201 cifar10 seed0: Kendall tau of cifar10_test_acc per stage: "
                    r"supernet -?\d\.\d{3} \(up to 6 cells\)$", said.strip())

    said = command("report", "--spec", spec(plan.report_spec()))
    assert said.strip() == "report: wrote results/REPORT.md and REPORT.html from 1 of 1 expected runs"
    assert Path("results/REPORT.md").is_file()


def test_long_evaluation_loops_print_a_heartbeat(monkeypatch):
    """Loops of evaluations between epochs (DARTS-PT's removals, SE-NAS's children, ...) say how far
    they got when they run longer than the interval; a short loop prints nothing."""
    import io

    monkeypatch.setenv(progress.HEARTBEAT_ENV, "1e-6")
    stream = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", stream)
    assert list(progress.loop(range(3), "op removals on cell edge 2")) == [0, 1, 2]
    lines = stream.getvalue().splitlines()
    assert [line.split(" after ")[0] for line in lines] == [f"op removals on cell edge 2 {k}/3" for k in (1, 2, 3)]
    assert all(" ETA " in line for line in lines)
    monkeypatch.setenv(progress.HEARTBEAT_ENV, "60")
    stream.truncate(0)
    assert list(progress.loop(iter([1, 2]), "short", total=2)) == [1, 2] and stream.getvalue() == ""
