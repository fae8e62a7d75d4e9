# nasflow: weight-sharing NAS methods as cached stages. Parameters: params/. Rules: workflow/rules/.
import os
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)

from pipeline_steps.pipeline.config import coerce_scalars
from pipeline_steps.pipeline.plan import runtime_json, spec_arg
from pipeline_steps.pipeline.preflight import preflight_or_exit
from pipeline_steps.pipeline.leftovers import remove_finished_resume_files, remove_interrupted_writes
from pipeline_steps.pipeline.snakemake_locks import clear_stale_locks, other_snakemake_running

# params/ is read by nasflow's own loader (not `configfile:`), so that a bad file is named with its
# line, and so that this machine's settings (params/machine.yaml, params/local.yaml, NASFLOW_*)
# come in under the tracked parameters; `--config` still wins over everything. Bad values, data,
# benchmark files or tracking backends stop here, before any job starts.
PLAN = preflight_or_exit(workflow.basedir, coerce_scalars(dict(workflow.config_settings.overwrite_config or {})))
config.clear()
config.update(PLAN.cfg)
# a Snakemake killed with SIGKILL leaves its lock: with no other Snakemake working here it is stale.
# Only the main invocation decides: a cluster or group job's Snakemake (--nolock, --target-jobs) runs
# on another host, where the main one cannot be seen.
main_invocation = not {"--nolock", "--target-jobs", "--unlock"} & set(sys.argv)
if main_invocation and clear_stale_locks(Path(workflow.basedir)):
    print("nasflow: cleared the lock a killed Snakemake left behind", file=sys.stderr)
if main_invocation and not other_snakemake_running(Path(workflow.basedir)):
    remove_interrupted_writes(Path(workflow.basedir) / "results")
for damaged in PLAN.set_aside_damaged_outputs():
    print(f"nasflow: warning: {damaged.removesuffix('.damaged')} was damaged; moved to {damaged}, rebuilding it",
          file=sys.stderr)
# Settings that change no result reach the jobs through the environment, not rule params,
# so that changing them (tracking URI, data location, device) re-runs nothing.
os.environ["NASFLOW_RUNTIME"] = runtime_json(PLAN)

# One MLflow parent run per invocation holds its stages' runs; made only when jobs run (pipeline/invocation.py).
from pipeline_steps.pipeline.invocation import end_invocation, start_invocation

onstart:
    start_invocation(PLAN, main_invocation)

# Every job this Snakemake ran is recorded by now: the checkpoints kept for a kill in that window go.
onsuccess:
    end_invocation(succeeded=True)
    remove_finished_resume_files(Path(workflow.basedir) / "results")

onerror:
    end_invocation(succeeded=False)
    remove_finished_resume_files(Path(workflow.basedir) / "results")

wildcard_constraints:
    seed=r"\d+",
    key=r"[0-9a-f]{10}",
    method="|".join(config["methods"]),
    stage=r"[a-z][a-z0-9_]*",

include: "workflow/rules/search.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        PLAN.targets(),
