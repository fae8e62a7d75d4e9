# What a derived cell is worth: NAS-Bench-201 lookup (and of the cell derived after every search
# epoch), or, in the DARTS space, training the derived network from scratch; and how well each
# supernet ranks cells (NB201).


rule benchmark_lookup:
    input:
        arch="results/nb201/{dataset}/seed{seed}/{method}/derive/arch.json",
        stage_metrics=lambda w: [d + "/metrics.json" for d in PLAN.stage_dirs(w.method, "nb201", w.dataset, int(w.seed))],
        history=lambda w: PLAN.stage_dirs(w.method, "nb201", w.dataset, int(w.seed))[-1] + "/history.json",
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
        " --stage-metrics {input.stage_metrics} --history {input.history}"
        " --out {output} > {log} 2>&1"


rule retrain:
    input:
        arch="results/{space}/{dataset}/seed{seed}/{method}/derive/arch.json",
        stage_metrics=lambda w: [d + "/metrics.json" for d in PLAN.stage_dirs(w.method, w.space, w.dataset, int(w.seed))],
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
        " --stage-metrics {input.stage_metrics} --model {output.model} --out {output.result} > {log} 2>&1"


rule rank_checkpoint:
    input:
        state="results/nb201/{dataset}/seed{seed}/{owner}/{stage}/supernet.pt",
    output:
        "results/nb201/{dataset}/seed{seed}/{owner}/{stage}/ranking.json",
    params:
        spec=lambda w: spec_arg(PLAN.checkpoint_ranking_spec(w.owner, w.dataset, int(w.seed), w.stage)),
    log:
        "results/nb201/{dataset}/seed{seed}/{owner}/{stage}/ranking.log",
    benchmark:
        "results/nb201/{dataset}/seed{seed}/{owner}/{stage}/ranking.tsv"
    wildcard_constraints:
        owner="|".join(["supernet", *config["methods"]]),
        stage=r"[a-z0-9_]+",  # a method's stage, or a supernet's key
    threads: PLAN.resources("rank_checkpoint")["threads"]
    resources:
        mem_mb=PLAN.resources("rank_checkpoint")["mem_mb"],
        runtime=PLAN.resources("rank_checkpoint")["runtime"],
        gpu=PLAN.resources("rank_checkpoint")["gpu"],
    shell:
        "python -m pipeline_steps --threads {threads} rank-checkpoint --spec {params.spec:q} --state {input.state}"
        " --out {output} > {log} 2>&1"


rule ranking:
    input:
        stages=lambda w: PLAN.stage_ranking_files(w.method, w.dataset, int(w.seed)),
    output:
        "results/nb201/{dataset}/seed{seed}/{method}/ranking/result.json",
    params:
        spec=lambda w: spec_arg(PLAN.ranking_spec(w.method, w.dataset, int(w.seed))),
    log:
        "results/nb201/{dataset}/seed{seed}/{method}/ranking/log.txt",
    threads: PLAN.resources("ranking")["threads"]
    resources:
        mem_mb=PLAN.resources("ranking")["mem_mb"],
        runtime=PLAN.resources("ranking")["runtime"],
        gpu=PLAN.resources("ranking")["gpu"],
    shell:
        "python -m pipeline_steps ranking --spec {params.spec:q} --stage-rankings {input.stages} --out {output} > {log} 2>&1"
