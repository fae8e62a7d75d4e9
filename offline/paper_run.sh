#!/usr/bin/env bash
# Paper-profile NAS-Bench-201 searches on a GPU machine without network (see offline/setup.sh):
#     offline/paper_run.sh WHEEL_DIR CIFAR10_TARBALL --methods ostr darts --seeds 0 1 2 --budget 3000 [--jobs 4]
# Stops cleanly at the budget (exit 3); the same command resumes. Then, where git is:
#     python -m pipeline_steps ledger add && git add ledger && git commit
set -euo pipefail
cd "$(dirname "$0")/.."
source offline/setup.sh "$1" "$2"
shift 2
exec python -m pipeline_steps paper-run --data "$NASFLOW_DATA" "$@"
