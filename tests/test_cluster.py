"""SLURM through the Snakemake executor plugin and workflow/profiles/slurm.

The sbatch command lines are built by the plugin itself from the jobs Snakemake plans for our
rules. The end-to-end run needs a live SLURM: `.ci/slurm-e2e` brings up a single-node cluster
with one fake GPU, sets NASFLOW_SLURM_E2E=1 and runs it; elsewhere it is skipped."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import yaml

from project import BIN, copy_project, jobs_to_run, snakemake, tiny_params

SLURM_PROFILE = "workflow/profiles/slurm"
GRES_OVERLAY = "workflow/profiles/slurm/gres.yaml"
RULE_OF_RESOURCE = {"lookup": "benchmark_lookup"}  # params/nasflow.yaml `resources` key -> rule name


def print_sbatch_lines(flavour: str, profiles: list[str], config: list[str]) -> None:
    """Plan the workflow in the current directory the way `snakemake --profile ...` would and
    print, per job, the sbatch command line the SLURM plugin builds for it (JSON lines)."""
    from types import SimpleNamespace

    from snakemake.api import SnakemakeApi
    from snakemake.cli import parse_args, parse_config
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings, StorageSettings
    from snakemake_executor_plugin_slurm import Executor
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

    argv = [arg for p in profiles for arg in ("--profile", p)] + ["--config", *config]
    _, args = parse_args(argv)
    settings = ExecutorPluginRegistry().get_plugin(args.executor).get_settings(args)
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(nodes=args.jobs, overwrite_resources=args.set_resources,
                                               default_resources=args.default_resources),
            config_settings=ConfigSettings(config=parse_config(args.config)),
            storage_settings=StorageSettings(), snakefile=Path("Snakefile"), workdir=Path.cwd())
        workflow.dag(DAGSettings(targets=set())).execute_workflow(
            executor=args.executor, pseudo_executor="dryrun", executor_settings=settings)
        jobs = workflow._workflow.dag.needrun_jobs(exclude_finished=False)
        # what the executor holds when no site partition/account is configured
        executor = SimpleNamespace(_partitions=None, _fallback_partition="", _fallback_account_arg="")
        for job in jobs:
            if job.rule.norun:  # `all`: no command, never submitted
                continue
            validate_slurm_extra(job)
            params = {"run_uuid": "RUN", "slurm_logfile": "LOG", "comment_str": f"rule_{job.name}",
                      "workdir": str(Path.cwd()), "account": next(Executor.get_account_arg(executor, job)),
                      "partition": Executor.get_partition_arg(executor, job)}
            line = get_submit_command(job, params, settings=settings) + set_gres_string(job)
            print("SBATCH " + json.dumps({"flavour": flavour, "rule": job.name, "line": line}), flush=True)


def sbatch_lines(project: Path, flavours: dict[str, list[str]], config: list[str]) -> dict[str, dict[str, list[str]]]:
    """{flavour: {rule: [sbatch line per job]}} for each set of profiles, planned in one process."""
    calls = "; ".join(f"print_sbatch_lines({f!r}, {profiles!r}, {config!r})" for f, profiles in flavours.items())
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"from test_cluster import print_sbatch_lines; {calls}")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(project)}
    env.pop("NASFLOW_RUNTIME", None)
    r = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines: dict[str, dict[str, list[str]]] = {f: {} for f in flavours}
    for row in r.stdout.splitlines():
        if row.startswith("SBATCH "):
            job = json.loads(row[len("SBATCH "):])
            lines[job["flavour"]].setdefault(job["rule"], []).append(job["line"])
    return lines


def parse_sbatch(line: str) -> dict[str, str | bool]:
    """sbatch's options as {flag: value}; a flag without a value maps to True."""
    words, opts = shlex.split(line)[1:], {}
    i = 0
    while i < len(words):
        flag = words[i]
        if flag.startswith("--") and "=" in flag:
            key, value = flag.split("=", 1)
            opts[key] = value
        elif i + 1 < len(words) and not words[i + 1].startswith("-"):
            opts[flag] = words[i + 1]
            i += 1
        else:
            opts[flag] = True
        i += 1
    return opts


# every rule planned: NB201 retraining on, a method with stages of its own (DARTS-PT); threads
# reach SLURM as CPUs
PLAN_CONFIG = ["methods=[darts, darts_pt]", "retrain_nb201={enabled: true}", "resources={supernet: {threads: 2}}"]


@pytest.fixture(scope="module")
def planned(tmp_path_factory, tiny_folder) -> tuple[Path, dict, dict]:
    """The project, its rules' resources from params (with PLAN_CONFIG's threads), and the sbatch
    lines per GPU flavour."""
    p = copy_project(tmp_path_factory.mktemp("slurm_plan"))
    tiny_params(p, tiny_folder)
    resources = yaml.safe_load((p / "params" / "nasflow.yaml").read_text())["resources"]
    resources["supernet"]["threads"] = 2
    rules = {RULE_OF_RESOURCE.get(k, k): r for k, r in resources.items()}
    return p, rules, sbatch_lines(p, {"gpus": [SLURM_PROFILE], "gres": [SLURM_PROFILE, GRES_OVERLAY]}, PLAN_CONFIG)


def training(rule: dict) -> bool:
    return rule["gpu"] != 0  # `auto`: a GPU wherever there is one


def test_sbatch_lines_for_gpu_and_cpu_rules(planned):
    project, rules, flavours = planned
    lines = flavours["gpus"]
    assert sorted(lines) == sorted(rules)
    assert {r for r in rules if training(rules[r])} >= {"supernet", "method_stage", "retrain"}
    for rule, res in rules.items():
        want = {"--mem": str(res["mem_mb"]), "-t": str(res["runtime"]), "--cpus-per-task": str(res["threads"])}
        want.update({"--gpus": "1"} if training(res) else {"--ntasks": "1"})
        for line in lines[rule]:
            opts = parse_sbatch(line)
            assert {k: opts.get(k) for k in want} == want, line
            assert opts["--requeue"] is True and opts["--export"] == "ALL" and opts["-D"] == str(project), line
            assert "--gres" not in opts, line
            if training(res):  # one task: the stage runs once, not once per GPU
                assert not any(k.startswith("--ntasks") for k in opts), line
            else:
                assert "--gpus" not in opts, line
            # no partition or account unless a site sets one: SLURM's default partition takes the job
            assert "-p" not in opts and "-A" not in opts, line
    assert "--cpus-per-task=2" in lines["supernet"][0] and len(lines["supernet"]) == 2  # one per seed


def test_gres_overlay_asks_for_gpus_as_generic_resources(planned):
    _, rules, flavours = planned
    lines = flavours["gres"]
    assert sorted(lines) == sorted(rules)
    for rule, res in rules.items():
        for line in lines[rule]:
            opts = parse_sbatch(line)
            if training(res):
                assert opts.get("--gres") == "gpu:1" and "--gpus" not in opts, line
                assert not any(k.startswith("--ntasks") for k in opts), line
            else:
                assert "gpu" not in line, line


# ----------------------------------------------------------------------------- end to end on SLURM
E2E = os.environ.get("NASFLOW_SLURM_E2E") == "1"
SLURM_DIR = Path(os.environ.get("NASFLOW_SLURM_DIR", "/tmp/nasflow-slurm"))
SLURM_TIMEOUT_S = 900  # the tiny run takes minutes; a busy 2-core machine doubles that
# the quick workflow on the baseline method, two seeds, without the (slow) ranking diagnostic
QUICK = ["methods=[darts]", "diagnostics={ranking: {enabled: false}}"]


def slurm_logs(project: Path) -> str:
    """What to read when the cluster run goes wrong: job logs and the daemons' logs."""
    parts = []
    for f in sorted((project / ".snakemake" / "slurm_logs").rglob("*.log")) + sorted(SLURM_DIR.glob("slurm*.log")):
        parts.append(f"----- {f}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-40:]))
    return "\n".join(parts)


def submitted_jobs(log: str) -> dict[str, list[str]]:
    """SLURM job ids per rule, from Snakemake's log ('Job 4 has been submitted with SLURM jobid 2')."""
    rule_of, jobs = {}, {}
    current = None
    for line in log.splitlines():
        m = re.match(r"rule (\w+):", line.strip())
        if m:
            current = m.group(1)
        m = re.match(r"\s*jobid: (\d+)", line)
        if m and current:
            rule_of[m.group(1)] = current
        m = re.search(r"Job (\d+) has been submitted with SLURM jobid (\d+)", line)
        if m:
            jobs.setdefault(rule_of[m.group(1)], []).append(m.group(2))
    return jobs


def slurm_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-d", "-o", "show", "job", job_id], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def run_on_slurm(project: Path) -> str:
    """The quick workflow through the plugin, bounded in time; SLURM jobs left behind are cancelled."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(project)}
    env.pop("NASFLOW_RUNTIME", None)
    cmd = [sys.executable, "-m", "snakemake", "--profile", SLURM_PROFILE, "--config", *QUICK,
           "--slurm-keep-successful-logs",
           # a short first pause between status polls: the tiny stages take seconds, not hours
           "--seconds-between-status-checks", "2", "--slurm-init-seconds-before-status-checks", "2"]
    with open(project / "slurm-run.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=SLURM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    text = (project / "slurm-run.log").read_text()
    if rc != 0:
        ids = [i for ids in submitted_jobs(text).values() for i in ids]
        if ids:
            subprocess.run(["scancel", *ids], timeout=30, check=False)
        why = f"timed out after {SLURM_TIMEOUT_S} s" if rc is None else f"exited {rc}"
        pytest.fail(f"snakemake on SLURM {why}\n{text[-4000:]}\n{slurm_logs(project)}")
    return text


def same_results(a: Path, b: Path) -> None:
    """Equal supernet weights, architecture parameters, histories and benchmark numbers."""
    for seed_dir in sorted((a / "results" / "nb201" / "cifar10").glob("seed*")):
        other = b / seed_dir.relative_to(a)
        ckpt = next(seed_dir.glob("supernet/*/supernet.pt"))
        x = torch.load(ckpt, weights_only=False)
        y = torch.load(other / ckpt.relative_to(seed_dir), weights_only=False)
        assert x["epoch"] == y["epoch"]
        for k in x["model"]:
            torch.testing.assert_close(x["model"][k], y["model"][k], rtol=0, atol=0, msg=f"{seed_dir.name} {k}")
        for k in x["alpha"]:
            torch.testing.assert_close(x["alpha"][k], y["alpha"][k], rtol=0, atol=0)
        lookup_x = json.loads((seed_dir / "darts" / "lookup" / "result.json").read_text())
        lookup_y = json.loads((other / "darts" / "lookup" / "result.json").read_text())
        for result in (lookup_x, lookup_y):  # measured times differ between any two runs
            result.pop("wall_time_s")
            for stage in result.get("stages", []):
                stage.pop("wall_time_s", None)
        assert lookup_x == lookup_y


@pytest.mark.skipif(not E2E, reason="needs a live SLURM cluster: .ci/slurm-e2e brings one up and runs this")
def test_quick_workflow_on_slurm_equals_local_run(tmp_path, tiny_folder):
    probe = subprocess.run(["sinfo", "-h", "-o", "%a %D %G"], capture_output=True, text=True, timeout=30, check=False)
    assert probe.returncode == 0 and "up" in probe.stdout, f"no SLURM controller answers: {probe.stderr}"

    local = copy_project(tmp_path / "local")
    tiny_params(local, tiny_folder)
    local_run = snakemake("--config", *QUICK, "tracking={enabled: false}", cwd=local)
    planned = {rule: n for rule, n in jobs_to_run(local_run).items() if rule != "all"}

    cluster = copy_project(tmp_path / "cluster")
    tiny_params(cluster, tiny_folder)
    t0 = time.monotonic()
    log = run_on_slurm(cluster)
    print(f"quick workflow on SLURM: {time.monotonic() - t0:.0f} s")

    jobs = submitted_jobs(log)
    assert {rule: len(ids) for rule, ids in jobs.items()} == planned  # every job went through sbatch
    # training rules got the (fake) GPU from SLURM and the others none; one GPU runs one job at a time
    resources = yaml.safe_load((cluster / "params" / "nasflow.yaml").read_text())["resources"]
    gpu_rules = {RULE_OF_RESOURCE.get(k, k) for k, r in resources.items() if r["gpu"] != 0}
    assert "supernet" in gpu_rules
    gpu_jobs = []
    for rule, ids in jobs.items():
        for info in map(slurm_job, ids):
            assert (info.get("JobState"), info.get("JOB_GRES")) == \
                ("COMPLETED", "gpu:1" if rule in gpu_rules else "(null)"), (rule, info)
            if rule in gpu_rules:
                gpu_jobs.append(info)
    gpu_jobs.sort(key=lambda j: j["StartTime"])
    for first, second in pairwise(gpu_jobs):
        assert first["EndTime"] <= second["StartTime"], "two jobs shared the one GPU"

    same_results(local, cluster)
    assert json.loads((local / "metrics.json").read_text()) == json.loads((cluster / "metrics.json").read_text())
    assert jobs_to_run(snakemake("-n", "--config", *QUICK, cwd=cluster)) == {}  # current for a local run too
