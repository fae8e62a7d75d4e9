"""The ledger of reproduced results, on hand-made finished runs: only paper-profile GPU runs become
records, records round-trip, the report renders them beside the papers' numbers (also with no run
in results/), a malformed record is one line naming its file, stale records are shown apart."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_steps.common.errors import NasflowError
from pipeline_steps.evaluation.benchmark import load_benchmark
from pipeline_steps.methods import PROTOCOL_VERSIONS
from pipeline_steps.pipeline.cli import main
from pipeline_steps.report.build import report
from pipeline_steps.report.ledger import add_runs, format_ledger, load_ledger, make_record, record_path, write_record
from pipeline_steps.report.reproduction import NB201_METRICS, load_paper_results

ROOT = Path(__file__).resolve().parents[1]
BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
OTHER = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
CARD = "NVIDIA H100 80GB HBM3"
WALL = {"supernet": 3600.0, "select": 1800.0, "derive": 36.0, "lookup": 9.0}
RUNTIME = {"benchmark": {"source": "table", "path": None}, "tracking": {"enabled": False}, "config_hash": "x",
           "git_commit": "x"}


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("table", None)


def finished_run(results: Path, bench, method: str, seed: int, arch: str, profile: str = "paper",
                 device_name: str | None = CARD, commit: str = "abc1234", provenance: bool = True) -> Path:
    """A lookup/result.json as the lookup stage writes it."""
    path = results / "nb201" / "cifar10" / f"seed{seed}" / method / "lookup" / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {**bench.lookup(arch), "method": method, "space": "nb201", "dataset": "cifar10", "seed": seed,
              "device": "cuda:0" if device_name != "cpu" else "cpu", "supernet_key": "k", "selected_epoch": 49,
              "trajectories": {}, "wall_time_s": WALL}
    if provenance:
        stage = {"key": "k", "device_name": device_name, "torch": "2.4.0", "data_fingerprint": "f00d",
                 "captured_step": "graph"}
        result.update(profile=profile, git_commit=commit, protocol_version=PROTOCOL_VERSIONS[method],
                      device_name=device_name, torch="2.4.0", data_fingerprint="f00d",
                      stages=[{**stage, "stage": "supernet", "wall_time_s": 3600.0},
                              {**stage, "stage": "select", "wall_time_s": 1800.0}])
    path.write_text(json.dumps(result))
    return path


def one_line_error(call, *names: str) -> str:
    with pytest.raises(NasflowError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message and all(n in message for n in names), message
    return message


def test_only_paper_profile_gpu_runs_are_recorded(tmp_path, bench):
    results, ledger = tmp_path / "results", tmp_path / "ledger"
    good = finished_run(results, bench, "ostr", 0, BEST)
    quick = finished_run(results, bench, "ostr", 1, BEST, profile="quick")
    cpu = finished_run(results, bench, "ostr", 2, BEST, device_name="cpu")
    old = finished_run(results, bench, "ostr", 3, BEST, provenance=False)
    (results / "nb201" / "cifar10" / "seed4" / "ostr" / "derive").mkdir(parents=True)  # still running
    assert "profile 'quick'" in one_line_error(lambda: make_record(quick), str(quick))
    assert "CUDA" in one_line_error(lambda: make_record(cpu), str(cpu))
    assert "provenance" in one_line_error(lambda: make_record(old), str(old))
    partial = results / "nb201" / "cifar10" / "seed4" / "ostr" / "lookup" / "result.json"
    assert "not finished" in one_line_error(lambda: make_record(partial), str(partial))

    lines = add_runs(results, ledger)  # runs found in results/: the ineligible ones are skipped, one line each
    assert sum(line.startswith("skipped:") for line in lines) == 4 and len(lines) == 5
    assert [p.name for p in ledger.rglob("*.json")] == ["seed0-abc1234.json"]
    assert (ledger / "nb201" / "cifar10" / "ostr" / "seed0-abc1234.json").exists()
    assert add_runs(results, ledger, methods=["ostr"], seeds=[0]) == \
        [f"unchanged: {ledger / 'nb201' / 'cifar10' / 'ostr' / 'seed0-abc1234.json'}"]
    assert good.exists()


def test_named_run_that_is_not_eligible_exits_2(tmp_path, bench, capsys):
    results, ledger = tmp_path / "results", tmp_path / "ledger"
    finished_run(results, bench, "ostr", 0, BEST)
    finished_run(results, bench, "ostr", 1, BEST, profile="quick")
    code = main(["ledger", "add", "--results", str(results), "--ledger", str(ledger), "--seeds", "0", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "seed1" in err and "profile 'quick'" in err
    assert not ledger.exists()  # nothing written when a named run is refused
    assert main(["ledger", "add", "--results", str(results), "--ledger", str(ledger), "--seeds", "0"]) == 0
    assert "added:" in capsys.readouterr().out


def test_record_round_trips(tmp_path, bench):
    run = finished_run(tmp_path / "results", bench, "darts_pt", 3, OTHER, commit="deadbee")
    record = make_record(run, recorded_at="2025-01-02T03:04:05+00:00")
    path, status = write_record(record, tmp_path / "ledger")
    assert status == "added" and path == tmp_path / "ledger" / "nb201" / "cifar10" / "darts_pt" / "seed3-deadbee.json"
    assert record["search_cost_gpu_s"] == pytest.approx(3600 + 1800 + 36)  # training stages + derive, no lookup
    assert record["arch"] == OTHER and record["device_name"] == CARD
    assert all(record[m] == bench.lookup(OTHER)[m] for m in NB201_METRICS)
    table = load_ledger(tmp_path / "ledger")
    assert len(table) == 1
    row = table.iloc[0]
    assert {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in record} == record
    assert not row["stale"]
    # a later run of the same seed at another commit is another record
    write_record({**record, "git_commit": "f00f00f"}, tmp_path / "ledger")
    assert len(load_ledger(tmp_path / "ledger")) == 2


def test_report_renders_the_ledger_without_results(tmp_path, bench):
    results, ledger = tmp_path / "results", tmp_path / "ledger"
    for seed in (0, 1):
        finished_run(results, bench, "ostr", seed, BEST)
    finished_run(results, bench, "darts_pt", 0, OTHER)
    add_runs(results, ledger)
    empty = tmp_path / "fresh_clone" / "results"  # nothing has run here
    spec = {"stage": "report", "profile": "quick", "spaces": ["nb201"], "expected": [], "results": [], "ranking": []}
    report(spec, RUNTIME, empty, paper=load_paper_results(ROOT / "params"), ledger_dir=ledger)
    text = (empty / "REPORT.md").read_text()
    assert "the ledger of paper-profile GPU runs" in text
    ostr = bench.lookup(BEST)["cifar10_test_acc"]  # 94.37 against OStr-DARTS' 94.36±0.00 (tolerance 0.3)
    row = next(line for line in text.splitlines() if line.startswith("| OStr-DARTS | cifar10 | C10 test |"))
    assert f"| {ostr:.2f}±0.00 | 2 / 5 |" in row and "| match |" in row and CARD in row and "abc1234" in row
    row = next(line for line in text.splitlines() if line.startswith("| DARTS-PT | cifar10 | C10 test |"))
    assert f"{bench.lookup(OTHER)['cifar10_test_acc']:.2f}" in row and "| off |" in row
    assert "Stale (older protocol)" not in text


def test_malformed_record_is_one_line_naming_it(tmp_path, bench):
    ledger = tmp_path / "ledger"
    path, _ = write_record(make_record(finished_run(tmp_path / "results", bench, "ostr", 0, BEST)), ledger)
    good = json.loads(path.read_text())
    path.write_text("{not json")
    one_line_error(lambda: load_ledger(ledger), str(path), "not valid JSON")
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "cifar10_test_acc"}))
    one_line_error(lambda: load_ledger(ledger), str(path), "cifar10_test_acc")
    path.write_text(json.dumps({**good, "seed": "zero"}))
    one_line_error(lambda: load_ledger(ledger), str(path), "seed must be int")
    path.write_text(json.dumps({**good, "seed": 7}))
    one_line_error(lambda: load_ledger(ledger), str(path), "belongs in")
    path.write_text(json.dumps(good))
    assert len(load_ledger(ledger)) == 1


def test_stale_record_is_shown_apart(tmp_path, bench):
    ledger = tmp_path / "ledger"
    current = make_record(finished_run(tmp_path / "results", bench, "ostr", 0, BEST))
    write_record(current, ledger)
    stale = {**make_record(finished_run(tmp_path / "results", bench, "ostr", 1, OTHER, commit="0ld0ld0")),
             "protocol_version": PROTOCOL_VERSIONS["ostr"] - 1}
    write_record(stale, ledger)
    table = load_ledger(ledger)
    assert list(table["stale"]) == [False, True]
    assert "stale" in format_ledger(table).splitlines()[2]
    spec = {"stage": "report", "profile": "paper", "spaces": ["nb201"], "expected": [], "results": [], "ranking": []}
    report(spec, RUNTIME, tmp_path / "out", paper=load_paper_results(ROOT / "params"), ledger_dir=ledger)
    text = (tmp_path / "out" / "REPORT.md").read_text()
    main_part, stale_part = text.split("#### Stale (older protocol)")
    row = next(line for line in main_part.splitlines() if line.startswith("| OStr-DARTS | cifar10 | C10 test |"))
    assert "| 1 / 5 |" in row and "0ld0ld0" not in main_part  # the stale seed is not averaged in
    assert f"| OStr-DARTS | cifar10 | 1 | {PROTOCOL_VERSIONS['ostr'] - 1} / {PROTOCOL_VERSIONS['ostr']} |" in stale_part
    assert "0ld0ld0" in stale_part and record_path(stale, ledger).exists()
