"""Bad input: one clear line naming the bad value and its fix, exit status 2, nothing written,
before any job starts. The battery runs in-process through the same preflight the Snakefile
calls; the e2e copy runs each case through `snakemake` itself."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_steps.pipeline.preflight import preflight_or_exit
from tests.project import copy_project, snakemake

ROOT = Path(__file__).resolve().parents[1]


def nasflow(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline_steps", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def _edit(path: str, text: str):
    def apply(project: Path, data: Path) -> None:
        (project / path).write_text(text)
    return apply


def _merge(path: str, values: dict):
    def apply(project: Path, data: Path) -> None:
        f = project / path
        cfg = yaml.safe_load(f.read_text()) if f.exists() else {}
        cfg.update(values)
        f.write_text(yaml.safe_dump(cfg))
    return apply


def _data(make):
    def apply(project: Path, data: Path) -> None:
        root = make(project, data)
        _merge("params/local.yaml", {"data": {"root": str(root), "source": "folder", "download": False}})(project, data)
    return apply


def _copy_without(part: str):
    def make(project: Path, data: Path) -> Path:
        import shutil
        dest = project.parent / "data-copy"
        shutil.copytree(data, dest, dirs_exist_ok=True)
        shutil.rmtree(dest / part)
        return dest
    return make


def _results_file(project: Path, data: Path) -> None:
    (project / "results").rmdir()
    (project / "results").write_text("not a folder")


# (name, --config overrides, environment, file edits, text the one line must contain)
CASES = [
    ("dataset", {"datasets": ["svhn"]}, {}, None, "datasets.0 = 'svhn'"),
    ("no datasets", {"datasets": []}, {}, None, "datasets = []"),
    ("epochs negative", {"search": {"epochs": -3}}, {}, None, "search.epochs = -3"),
    ("epochs zero", {"search": {"epochs": 0}}, {}, None, "search.epochs = 0"),
    ("batch text", {"search": {"batch_size": "big"}}, {}, None, "search.batch_size = 'big'"),
    ("lr negative", {"search": {"lr": -0.1}}, {}, None, "search.lr = -0.1"),
    ("arch betas", {"search": {"arch_betas": [0.5]}}, {}, None, "search.arch_betas = [0.5]"),
    ("alpha init", {"search": {"alpha_init": "zeros"}}, {}, None, "search.alpha_init = 'zeros'"),
    ("mixing", {"search": {"mixing": "relu"}}, {}, None, "search.mixing = 'relu'"),
    ("unknown key", {"search": {"epoch": 3}}, {}, None, "unknown parameter in search"),
    ("method", {"methods": ["nope"]}, {}, None, "methods.0 = 'nope'"),
    ("no methods", {"methods": []}, {}, None, "methods = []"),
    ("space", {"spaces": ["nasbench101"]}, {}, None, "spaces.0 = 'nasbench101'"),
    ("seed negative", {"seeds": [-1]}, {}, None, "seeds.0 = -1"),
    ("seed text", {"seeds": ["a"]}, {}, None, "seeds.0 = 'a'"),
    ("profile", {"profile": "huge"}, {}, None, "unknown profile 'huge'"),
    ("device", {"device": "tpu"}, {}, None, "device = 'tpu'"),
    ("device index", {"device": "cuda:x"}, {}, None, "device = 'cuda:x'"),
    ("captured step", {"captured_step": "always"}, {}, None, "captured_step = 'always'"),
    ("channels last", {"channels_last": "maybe"}, {}, None, "channels_last = 'maybe'"),
    ("gpu slots", {"gpu_slots": 0}, {}, None, "gpu_slots = 0"),
    ("cores", {"cores": 0}, {}, None, "cores = 0"),
    ("gpus", {"gpus": -1}, {}, None, "gpus = -1"),
    ("train portion", {"data": {"train_portion": 1.5}}, {}, None, "data.train_portion = 1.5"),
    ("image size", {"data": {"image_size": 4}}, {}, None, "data.image_size = 4"),
    ("max images", {"data": {"max_images": 5}}, {}, None, "data.max_images = 5"),
    ("data source", {"data": {"source": "hdf5"}}, {}, None, "data.source = 'hdf5'"),
    ("benchmark source", {"benchmark": {"source": "nb101"}}, {}, None, "benchmark.source = 'nb101'"),
    ("benchmark without path", {"benchmark": {"source": "official"}}, {}, None, "needs benchmark.path"),
    ("benchmark path", {"benchmark": {"path": "/no/such/NAS-Bench-201.pth"}}, {}, None, "/no/such/NAS-Bench-201.pth"),
    ("preset", {"method": {"hep_nas": {"preset": "nope"}}}, {}, None, "method.hep_nas.preset = 'nope'"),
    ("op set", {"space": {"darts": {"op_set": "s9"}}}, {}, None, "space.darts.op_set = 's9'"),
    ("retrain epochs", {"retrain": {"epochs": 0}}, {}, None, "retrain.epochs = 0"),
    ("topology", {"method": {"darts_pt": {"topology": "greedy"}}}, {}, None, "topology = 'greedy'"),
    ("tracking scheme", {"tracking": {"enabled": True, "uri": "foo://bar"}}, {}, None, "tracking.uri = 'foo://bar'"),
    ("tracking relative", {"tracking": {"enabled": True, "uri": "sqlite:///rel.db"}}, {}, None, "must be absolute"),
    ("tracking folder", {"tracking": {"enabled": True, "uri": "sqlite:////no/such/dir/mlflow.db"}}, {}, None,
     "/no/such/dir"),
    ("tracking server down", {"tracking": {"enabled": True, "uri": "http://127.0.0.1:9"}}, {}, None,
     "http://127.0.0.1:9"),
    ("env cores", {}, {"NASFLOW_CORES": "many"}, None, "cores = 'many'"),
    ("env device", {}, {"NASFLOW_DEVICE": "gpu"}, None, "device = 'gpu'"),
    ("env data root", {}, {"NASFLOW_DATA_ROOT": "/no/such/cifar"}, None, "/no/such/cifar"),
    ("params syntax", {}, {}, _edit("params/nasflow.yaml", "methods: [darts\nseeds: [0]\n"), "nasflow.yaml line"),
    ("params empty", {}, {}, _edit("params/nasflow.yaml", ""), "nasflow.yaml is empty"),
    ("params list", {}, {}, _edit("params/nasflow.yaml", "- darts\n"), "must hold a mapping"),
    ("profile syntax", {}, {}, _edit("params/profiles/quick.yaml", "search: {epochs: 3\n"), "quick.yaml line"),
    ("local syntax", {}, {}, _edit("params/local.yaml", "data: [\n"), "local.yaml line"),
    ("local not machine", {}, {}, _merge("params/local.yaml", {"seeds": [3]}), "seeds is not a machine setting"),
    ("machine key tracked", {}, {}, _merge("params/nasflow.yaml", {"device": "cpu"}), "sets device, a machine setting"),
    ("data root missing", {}, {}, _data(lambda p, d: p.parent / "nothing-here"), "nothing-here does not exist"),
    ("data root file", {}, {}, _data(lambda p, d: (p.parent / "a-file").write_text("x") and p.parent / "a-file"),
     "a-file is a file"),
    ("data split missing", {}, {}, _data(_copy_without("test")), "data-copy/test"),
    ("data class missing", {}, {}, _data(_copy_without("train/class03")), "9 class folders"),
    ("results file", {}, {}, _results_file, "is a file"),
]


@pytest.fixture
def project(tmp_path, tiny_folder):
    """params/ and an empty results/ as a fresh checkout has them, reading the tiny dataset."""
    import shutil

    project = tmp_path / "project"
    shutil.copytree(ROOT / "params", project / "params", ignore=shutil.ignore_patterns("local.yaml"))
    (project / "results").mkdir()
    local = {"data": {"root": str(tiny_folder), "source": "folder", "download": False}, "tracking": {"enabled": False}}
    (project / "params" / "local.yaml").write_text(yaml.safe_dump(local))
    return project


def _arrange(project: Path, data: Path, env: dict, edit, monkeypatch=None) -> None:
    for name, value in env.items():
        if monkeypatch is not None:
            monkeypatch.setenv(name, value)
    if edit is not None:
        edit(project, data)


def _results_state(project: Path):
    results = project / "results"
    return sorted(str(p.relative_to(project)) for p in results.rglob("*")) if results.is_dir() else "file"


@pytest.mark.parametrize("name, overrides, env, edit, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_before_anything_runs(name, overrides, env, edit, needle, project, tiny_folder,
                                                    monkeypatch, capsys):
    _arrange(project, tiny_folder, env, edit, monkeypatch)
    before = _results_state(project)
    with pytest.raises(SystemExit) as stop:
        preflight_or_exit(project, overrides)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.startswith("nasflow: error: ") and err.count("\n") == 1, err
    assert needle in err, err
    assert _results_state(project) == before


def test_good_input_passes_preflight(project):
    plan = preflight_or_exit(project, {})
    assert plan.data_id("cifar10")


def _config_args(overrides: dict) -> list[str]:
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in overrides.items()]


# One case of each kind through Snakemake itself (each costs a Snakemake start, ~5 s).
E2E_CASES = [c for c in CASES if c[0] in {
    "dataset", "epochs zero", "profile", "device", "tracking scheme", "tracking server down", "env cores",
    "env data root", "params syntax", "params empty", "local not machine", "machine key tracked",
    "data root file", "data class missing", "results file"}]


@pytest.mark.e2e
@pytest.mark.parametrize("name, overrides, env, edit, needle", E2E_CASES, ids=[c[0] for c in E2E_CASES])
def test_snakemake_stops_on_bad_input(name, overrides, env, edit, needle, tmp_path, tiny_folder):
    project = copy_project(tmp_path / "project")
    (project / "results").mkdir(exist_ok=True)
    local = {"data": {"root": str(tiny_folder), "source": "folder", "download": False}, "tracking": {"enabled": False}}
    (project / "params" / "local.yaml").write_text(yaml.safe_dump(local))
    _arrange(project, tiny_folder, {}, edit)
    before = _results_state(project)
    extra = ["--config", *_config_args(overrides)] if overrides else []
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        r = snakemake(*extra, cwd=project, check=False)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("nasflow: error:")]
    assert r.returncode != 0
    assert len(lines) == 1 and needle in lines[0], r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert _results_state(project) == before


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


