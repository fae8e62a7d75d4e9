# The comparison report over every configured run.

# NB201 cells trained from scratch (retrain_nb201.enabled): the report waits for them and shows them.
RETRAIN_NB201 = [f for f in PLAN.targets() if f.startswith("results/nb201/") and f.endswith("/retrain/result.json")]


rule report:
    input:
        results=PLAN.report_spec()["results"],
        ranking=PLAN.ranking_files(),
        ledger=PLAN.ledger_files(),
        retrain_nb201=RETRAIN_NB201,
    output:
        report="results/REPORT.md",
        html="results/REPORT.html",
        metrics="metrics.json",
        summaries=expand("results/{space}/summary.parquet", space=config["spaces"]),
    params:
        spec=spec_arg({**PLAN.report_spec(), "retrain_nb201": RETRAIN_NB201}),
    log:
        "results/report.log",
    threads: PLAN.resources("report")["threads"]
    resources:
        mem_mb=PLAN.resources("report")["mem_mb"],
        runtime=PLAN.resources("report")["runtime"],
        gpu=PLAN.resources("report")["gpu"],
    shell:
        "python -m pipeline_steps report --spec {params.spec:q} > {log} 2>&1"
