#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) in build-fuzz/ and runs each for a bounded
# time from its seed corpus. Usage: scripts/fuzz.sh [seconds per target, default 60]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSCALPEL_BUILD_FUZZERS=ON -DSCALPEL_CUDA=OFF \
  -DSCALPEL_BUILD_TESTS=OFF -DSCALPEL_BUILD_BENCHMARKS=OFF -DSCALPEL_NATIVE=OFF >/dev/null
cmake --build build-fuzz -j "$(nproc)" --target fuzz_safetensors_header fuzz_bpe fuzz_sentencepiece
for t in safetensors_header bpe sentencepiece; do
  if [ $t = sentencepiece ] && [ ! -f "${SCALPEL_SHARED_DIR:-../shared}/models/llama-mini/tokenizer.model" ]; then
    echo "fuzz: sentencepiece SKIPPED (llama-mini's tokenizer.model not found under ${SCALPEL_SHARED_DIR:-../shared})"
    continue
  fi
  corpus=$(mktemp -d)
  cp -r fuzz/corpus/$t/. "$corpus"/ 2>/dev/null || true
  echo "fuzz: $t for ${SECONDS_PER_TARGET}s"
  log=$(mktemp)
  if ! ./build-fuzz/fuzz/fuzz_$t -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 "$corpus" >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $t FAILED (the crashing input is saved as crash-* in $(pwd))"
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|new_units_added|peak_rss_mb)" "$log" || true
  rm -rf "$corpus" "$log"
done
echo "fuzz: no crash"
