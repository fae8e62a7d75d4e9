# What a derived cell is worth: NAS-Bench-201 lookup (and of the cell derived after every search
# epoch), or, in the DARTS space, training the derived network from scratch.


rule benchmark_lookup:
    input:
        arch="results/nb201/{dataset}/seed{seed}/{method}/derive/arch.json",
        supernet_metrics=lambda w: PLAN.supernet_dir(w.method, "nb201", w.dataset, int(w.seed)) + "/metrics.json",
        supernet_history=lambda w: PLAN.supernet_dir(w.method, "nb201", w.dataset, int(w.seed)) + "/history.json",
    output:
        "results/nb201/{dataset}/seed{seed}/{method}/lookup/result.json",
    params:
        spec=lambda w: spec_arg(PLAN.lookup_spec(w.method, "nb201", w.dataset, int(w.seed))),
    log:
        "results/nb201/{dataset}/seed{seed}/{method}/lookup/log.txt",
    benchmark:
        "results/nb201/{dataset}/seed{seed}/{method}/lookup/benchmark.tsv"
    threads: PLAN.resources("lookup")["threads"]
    resources:
        mem_mb=PLAN.resources("lookup")["mem_mb"],
        runtime=PLAN.resources("lookup")["runtime"],
        gpu=PLAN.resources("lookup")["gpu"],
    shell:
        "python -m pipeline_steps --threads {threads} benchmark-lookup --spec {params.spec:q} --arch {input.arch}"
        " --supernet-metrics {input.supernet_metrics} --supernet-history {input.supernet_history}"
        " --out {output} > {log} 2>&1"


rule retrain:
    input:
        arch="results/{space}/{dataset}/seed{seed}/{method}/derive/arch.json",
        supernet_metrics=lambda w: PLAN.supernet_dir(w.method, w.space, w.dataset, int(w.seed)) + "/metrics.json",
    output:
        model="results/{space}/{dataset}/seed{seed}/{method}/retrain/model.pt",
        result="results/{space}/{dataset}/seed{seed}/{method}/retrain/result.json",
    params:
        spec=lambda w: spec_arg(PLAN.retrain_spec(w.method, w.space, w.dataset, int(w.seed))),
    log:
        "results/{space}/{dataset}/seed{seed}/{method}/retrain/log.txt",
    benchmark:
        "results/{space}/{dataset}/seed{seed}/{method}/retrain/benchmark.tsv"
    threads: PLAN.resources("retrain")["threads"]
    resources:
        mem_mb=PLAN.resources("retrain")["mem_mb"],
        runtime=PLAN.resources("retrain")["runtime"],
        gpu=PLAN.resources("retrain")["gpu"],
    shell:
        "python -m pipeline_steps --threads {threads} retrain --spec {params.spec:q} --arch {input.arch}"
        " --supernet-metrics {input.supernet_metrics} --model {output.model} --out {output.result} > {log} 2>&1"
