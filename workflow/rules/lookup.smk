# NAS-Bench-201 lookup of the derived cell (and of the cell derived after every search epoch).


rule benchmark_lookup:
    input:
        arch="results/{space}/{dataset}/seed{seed}/{method}/derive/arch.json",
        supernet_metrics=lambda w: PLAN.supernet_dir(w.method, w.space, w.dataset, int(w.seed)) + "/metrics.json",
        supernet_history=lambda w: PLAN.supernet_dir(w.method, w.space, w.dataset, int(w.seed)) + "/history.json",
    output:
        "results/{space}/{dataset}/seed{seed}/{method}/lookup/result.json",
    params:
        spec=lambda w: spec_arg(PLAN.lookup_spec(w.method, w.space, w.dataset, int(w.seed))),
    log:
        "results/{space}/{dataset}/seed{seed}/{method}/lookup/log.txt",
    benchmark:
        "results/{space}/{dataset}/seed{seed}/{method}/lookup/benchmark.tsv"
    threads: PLAN.resources("lookup")["threads"]
    resources:
        mem_mb=PLAN.resources("lookup")["mem_mb"],
        runtime=PLAN.resources("lookup")["runtime"],
        gpu=PLAN.resources("lookup")["gpu"],
    shell:
        "python -m pipeline_steps --threads {threads} benchmark-lookup --spec {params.spec:q} --arch {input.arch}"
        " --supernet-metrics {input.supernet_metrics} --supernet-history {input.supernet_history}"
        " --out {output} > {log} 2>&1"
