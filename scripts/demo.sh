#!/usr/bin/env bash
# The default job, set-up included: build scalpel, evaluate the embedded opt-mini model on the
# embedded held-out text and two zero-shot tasks, then prune it with SparseGPT to 50% (calibrated
# on the embedded calibration slice), export it, and evaluate the pruned model the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
scripts/setup.sh
./build/bin/scalpel eval configs/default.yaml
./build/bin/scalpel prune configs/prune-opt-mini.yaml "$@"
./build/bin/scalpel inspect runs/opt-mini-sparsegpt50/model | tail -n 1
