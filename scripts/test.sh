#!/usr/bin/env bash
# The whole test suite, set-up included: packages, build, every CTest test (unit, numerical,
# MPI at 1/2/4 ranks, end-to-end CLI), then the libFuzzer targets for a bounded time.
#   SCALPEL_FUZZ_SECONDS  seconds per fuzz target (default 60; 0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Tests run two at a time (and MPI tests oversubscribe): OpenMP threads that spin while waiting
# would steal the cores from each other; passive waiting keeps the suite's time predictable.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

scripts/setup.sh
BUILD_DIR=${SCALPEL_BUILD_DIR:-build}
if [ ! -d ../shared/models ]; then
  echo "test: ../shared is absent; the tests that need its models and texts will report SKIPPED"
fi
# The `slurm` tests need a running Slurm: start a one-node one (they report SKIPPED without it).
if [ "$(id -u)" -eq 0 ]; then
  scripts/slurm_setup.sh || echo "test: scripts/slurm_setup.sh failed; the slurm tests will report SKIPPED"
else
  echo "test: not root, Slurm not set up (scripts/slurm_setup.sh); the slurm tests will report SKIPPED unless one runs"
fi
ctest --test-dir "$BUILD_DIR" --output-on-failure -j 2 --timeout 900

# A machine without nvcc builds the CPU-only variant: compile the libraries whose code differs
# there (the #if SCALPEL_HAVE_CUDA / NCCL branches), so that build cannot silently break.
cmake -S . -B "$BUILD_DIR-nocuda" -DSCALPEL_CUDA=OFF -DSCALPEL_BUILD_TESTS=OFF -DSCALPEL_BUILD_BENCHMARKS=OFF \
  -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$BUILD_DIR-nocuda" --target scalpel_backend scalpel_dist -j 2

FUZZ_SECONDS=${SCALPEL_FUZZ_SECONDS:-60}
if [ "$FUZZ_SECONDS" -gt 0 ]; then
  scripts/fuzz.sh "$FUZZ_SECONDS"
fi
