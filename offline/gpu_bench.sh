#!/usr/bin/env bash
# The GPU measurements in one command, on a GPU machine without network (see offline/setup.sh;
# gather the wheels with `offline/gather_wheels.py WHEEL_DIR --bench` for xautodl's row):
#     offline/gpu_bench.sh WHEEL_DIR CIFAR10_TARBALL OUT_DIR [PAPER_RUN_SECONDS [paper-run args]]
# 1. bench/bench.py on CUDA, every row but the pipeline's (about 8 minutes, compiling included) -> OUT_DIR/bench-cuda.md
# 2. with PAPER_RUN_SECONDS > 0, paper-profile NB201 searches for that long (default: DARTS and
#    OStr-DARTS, seed 0), their results -> OUT_DIR/results.tar.gz for `ledger add`. The same command
#    resumes them on the next machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${3:?output folder}; budget=${4:-0}
mkdir -p "$out"
source offline/setup.sh "$1" "$2"
shift $(( $# < 4 ? $# : 4 ))
python bench/bench.py --device cuda --skip-pipeline --iters 100 > "$out/bench-cuda.md" 2> "$out/bench-cuda.log" \
    || echo "bench failed: see $out/bench-cuda.log" >&2
cat "$out/bench-cuda.md"
if [ "$budget" -gt 0 ]; then
    args=("$@"); [ ${#args[@]} -gt 0 ] || args=(--methods darts ostr --seeds 0)
    rc=0; python -m pipeline_steps paper-run --data "$NASFLOW_DATA" --budget "$budget" "${args[@]}" || rc=$?
    tar -czf "$out/results.tar.gz" results
    exit $rc
fi
