# Supernet training (shared by every method whose supernet settings agree), the methods' own
# stages on its state (e.g. DARTS-PT's selection), and derivation.


rule supernet:
    output:
        checkpoint="results/{space}/{dataset}/seed{seed}/supernet/{key}/supernet.pt",
        metrics="results/{space}/{dataset}/seed{seed}/supernet/{key}/metrics.json",
        history="results/{space}/{dataset}/seed{seed}/supernet/{key}/history.json",
    params:
        spec=lambda w: spec_arg(PLAN.supernet_spec_for_key(w.space, w.dataset, int(w.seed), w.key)),
    log:
        "results/{space}/{dataset}/seed{seed}/supernet/{key}/log.txt",
    benchmark:
        "results/{space}/{dataset}/seed{seed}/supernet/{key}/benchmark.tsv"
    threads: PLAN.resources("supernet")["threads"]
    resources:
        mem_mb=PLAN.resources("supernet")["mem_mb"],
        runtime=PLAN.resources("supernet")["runtime"],
        gpu=PLAN.resources("supernet")["gpu"],
    shell:
        "python -m pipeline_steps --threads {threads} supernet --spec {params.spec:q} --checkpoint {output.checkpoint}"
        " --metrics {output.metrics} --history {output.history} > {log} 2>&1"


rule method_stage:
    input:
        start=lambda w: PLAN.method_stage_input(w.method, w.space, w.dataset, int(w.seed), w.stage),
    output:
        checkpoint="results/{space}/{dataset}/seed{seed}/{method}/{stage}/supernet.pt",
        metrics="results/{space}/{dataset}/seed{seed}/{method}/{stage}/metrics.json",
        history="results/{space}/{dataset}/seed{seed}/{method}/{stage}/history.json",
    params:
        spec=lambda w: spec_arg(PLAN.method_stage_spec(w.method, w.space, w.dataset, int(w.seed), w.stage)),
    log:
        "results/{space}/{dataset}/seed{seed}/{method}/{stage}/log.txt",
    benchmark:
        "results/{space}/{dataset}/seed{seed}/{method}/{stage}/benchmark.tsv"
    threads: PLAN.resources("method_stage")["threads"]
    resources:
        mem_mb=PLAN.resources("method_stage")["mem_mb"],
        runtime=PLAN.resources("method_stage")["runtime"],
        gpu=PLAN.resources("method_stage")["gpu"],
    shell:
        "python -m pipeline_steps --threads {threads} method-stage --spec {params.spec:q} --start {input.start}"
        " --checkpoint {output.checkpoint} --metrics {output.metrics} --history {output.history} > {log} 2>&1"


rule derive:
    input:
        state=lambda w: PLAN.final_state(w.method, w.space, w.dataset, int(w.seed)),
    output:
        "results/{space}/{dataset}/seed{seed}/{method}/derive/arch.json",
    params:
        spec=lambda w: spec_arg(PLAN.derive_spec(w.method, w.space, w.dataset, int(w.seed))),
    log:
        "results/{space}/{dataset}/seed{seed}/{method}/derive/log.txt",
    benchmark:
        "results/{space}/{dataset}/seed{seed}/{method}/derive/benchmark.tsv"
    threads: PLAN.resources("derive")["threads"]
    resources:
        mem_mb=PLAN.resources("derive")["mem_mb"],
        runtime=PLAN.resources("derive")["runtime"],
        gpu=PLAN.resources("derive")["gpu"],
    shell:
        "python -m pipeline_steps --threads {threads} derive --spec {params.spec:q} --state {input.state} --out {output} > {log} 2>&1"
