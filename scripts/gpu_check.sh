#!/usr/bin/env bash
# The checks that need the GPU machine (the `device` tool), as one prepared run per call: nothing is
# built there. Pack the bundle here first (scripts/gpu_bundle.sh), run the same script here (the GPU
# tests report SKIPPED, the transformers checks say what is missing), then on the device:
#   scripts/gpu_check.sh tests   # GPU tests of the backend, the model's backward, LLM Surgeon and the
#                                # CLI; transformers loads a depth-pruned OPT and LLaMA export and an
#                                # LLM Surgeon export and gives scalpel eval's perplexity (a few minutes)
#   scripts/gpu_check.sh bench   # bench_surgeon --device cuda at OPT-66B widths (9216 / 36864), 1%
#   scripts/gpu_check.sh bench13 # the same at OPT-13B widths (5120 / 20480), a shorter run
#   scripts/gpu_check.sh e2e     # bench_factor: fc2's 49152-wide factor whole and shared on one GPU; then
#                                # bench_e2e.sh: `scalpel prune` end to end of a synthetic one-layer OPT at
#                                # OPT-175B widths (128 x 2048 tokens), with bench_layer's ceilings; again
#                                # without the reconstruction error, and with the fp32 forward
#   scripts/gpu_check.sh all     # one call for a short loan: the default end-to-end layer, LLM Surgeon's
#                                # benchmark, the GPU tests, the transformers loads, then the rest
# GPU_CHECK_DEADLINE=S: no step starts after S seconds (it is listed as "skipped: deadline") and a
# running program is stopped then (rc 124), so the logs of the steps run still come back; set it
# below the device call's timeout, leaving a minute for the packing.
# Logs and JSON go to $OUT (the device tool's folder; default out/gpu_check) and into
# $OUT/gpu_check.tgz. Exit status: the number of failed and skipped steps (0 = all ran and passed).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-tests}
BUNDLE=${SCALPEL_BUNDLE:-.devpack/scalpel-gpu.tar.xz}
OUT=${OUT:-out/gpu_check}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE
if [ ! -x build/bin/scalpel ] && [ -f "$BUNDLE" ]; then
  # shellcheck disable=SC1091
  source scripts/gpu_unpack.sh "$BUNDLE"
fi
SHARED=$(cd .. && pwd)/shared
failed=0 skipped=0
DEADLINE=${GPU_CHECK_DEADLINE:-0}
[[ $DEADLINE =~ ^[0-9]+$ ]] || { echo "gpu_check: GPU_CHECK_DEADLINE must be whole seconds, got '$DEADLINE'" >&2; exit 2; }
step() {  # step NAME COMMAND...: runs it, logs to $OUT/NAME.log, counts a failure
  local name=$1
  shift
  if [ "$DEADLINE" -gt 0 ] && [ "$SECONDS" -ge "$DEADLINE" ]; then
    echo "gpu_check: $name skipped: deadline (${SECONDS} s of ${DEADLINE})" | tee -a "$OUT/summary.txt"
    skipped=$((skipped + 1))
    return 0
  fi
  local t0=$SECONDS
  local limit=()  # a program (not one of the functions here) is also stopped at the deadline
  if [ "$DEADLINE" -gt 0 ] && ! declare -F "$1" > /dev/null; then limit=(timeout $((DEADLINE - SECONDS))); fi
  "${limit[@]}" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "gpu_check: $name rc=$rc ($((SECONDS - t0)) s)" | tee -a "$OUT/summary.txt"
  [ $rc -eq 0 ] || failed=$((failed + 1))
  return 0
}

# The perplexity `scalpel eval` prints for the text preset on FILE (one line "text: ppl X").
eval_ppl() {
  build/bin/scalpel eval --model "$1" --text "text:$2" eval.seqlen=512 output.metrics= log.progress_seconds=0 2>&1 |
    sed -n 's/^text: ppl \([0-9.]*\).*/\1/p' | head -1
}

# A model folder loads in transformers and gives scalpel's perplexity (0.1%).
hf_check() {
  local folder=$1 text=$2
  local ppl
  ppl=$(eval_ppl "$folder" "$text")
  echo "scalpel eval: $ppl"
  [ -n "$ppl" ] || return 1
  python3 scripts/check_hf_load.py "$folder" --text "$text" --seqlen 512 --expect "$ppl"
}

unit_tests() {
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
  local t
  for t in backend/test_backend_ops backend/test_lowp_ops backend/test_uploader backend/test_backward_ops \
           model/test_model_prefetch model/test_decoder prune/test_split_factor \
           model/test_decoder_backward app/test_model_backward app/test_lowp_forward prune/test_surgeon \
           prune/test_prune_methods app/test_gpu; do
    step "$(basename "$t")" "build/tests/$t"
  done
}

heldout=data/corpus/heldout.txt
common=(calibration.path=data/corpus/calib.txt calibration.nsamples=16 calibration.seqlen=128 calibration.batch=4
        'eval.sets=[]' log.progress_seconds=0 output.export=model)

depth_checks() {  # issue 12: depth-pruned exports load in transformers
  step depth_opt build/bin/scalpel depth --model "$SHARED/models/opt-mini" depth.criterion=bi depth.remove=1 \
    output.dir="$OUT/runs/depth-opt" "${common[@]}"
  step hf_depth_opt hf_check "$OUT/runs/depth-opt/model" "$heldout"
  step depth_llama build/bin/scalpel depth --model "$SHARED/models/llama-mini" depth.criterion=angular \
    depth.remove=1 output.dir="$OUT/runs/depth-llama" "${common[@]}"
  step hf_depth_llama hf_check "$OUT/runs/depth-llama/model" "$heldout"
}

surgeon_checks() {  # issue 11: LLM Surgeon on the GPU, its export in transformers
  step surgeon_gpu build/bin/scalpel prune --model "$SHARED/models/opt-mini" device=cuda prune.method=surgeon \
    surgeon.shots=2 output.dir="$OUT/runs/surgeon" "${common[@]}" --restart
  step hf_surgeon hf_check "$OUT/runs/surgeon/model" "$heldout"
}

run_tests() {
  unit_tests
  depth_checks
  surgeon_checks
}

e2e_default() {  # issue 13: the default numerics (fp16 forward) end to end, with the ceilings
  step e2e_opt175b_layer benchmarks/bench_e2e.sh --device cuda --ceilings --out "$OUT/e2e_opt175b_layer.json"
}

run_e2e() {  # fc2's factor whole vs shared (one GPU); the default numerics, then without the
             # reconstruction error, then the fp32 forward
  step bench_factor_49152 build/bin/bench_factor --device cuda --width 49152 --tile 1024 --repeats 2 \
    --out "$OUT/bench_factor_cuda_49152.json"
  step bench_factor_49152_t512 build/bin/bench_factor --device cuda --width 49152 --tile 512 --repeats 2 \
    --out "$OUT/bench_factor_cuda_49152_t512.json"
  e2e_default
  e2e_rest
}

e2e_rest() {
  step e2e_opt175b_layer_noerr benchmarks/bench_e2e.sh --device cuda --set output.reconstruction_error=false \
    --out "$OUT/e2e_opt175b_layer_noerr.json"
  step e2e_opt175b_layer_fp32 benchmarks/bench_e2e.sh --device cuda --set cuda.forward_dtype=fp32 \
    --out "$OUT/e2e_opt175b_layer_fp32.json"
}

run_bench() {
  local hidden=$1 ffn=$2 heads=$3
  step "bench_surgeon_${hidden}" build/bin/bench_surgeon --device cuda --hidden "$hidden" --ffn "$ffn" \
    --heads "$heads" --sparsity 0.01 --repeats 1 --out "$OUT/bench_surgeon_cuda_${hidden}_${ffn}.json"
}

case $MODE in
  tests) run_tests ;;
  bench) run_bench 9216 36864 72 ;;
  bench13) run_bench 5120 20480 40 ;;
  e2e) run_e2e ;;
  all)
    # What the last loan (an H200, 15 min) left open first: the end-to-end layer with the phases
    # its metrics now split, LLM Surgeon's benchmark; then the tests (app/test_gpu, which took
    # 344 s there, last of them), the transformers loads and the rest.
    e2e_default
    run_bench 9216 36864 72
    unit_tests
    depth_checks
    surgeon_checks
    step bench_factor_49152 build/bin/bench_factor --device cuda --width 49152 --tile 1024 --repeats 1 \
      --out "$OUT/bench_factor_cuda_49152.json"
    e2e_rest ;;
  *) echo "usage: scripts/gpu_check.sh tests|bench|bench13|e2e|all" >&2; exit 2 ;;
esac
rm -rf "$OUT/runs/"*/model "$OUT/runs/"*/ckpt  # weights do not travel back
tar -C "$OUT" -czf "$OUT/gpu_check.tgz" --exclude=gpu_check.tgz . 2>/dev/null
echo "gpu_check: $MODE: $failed failed step(s), $skipped skipped (deadline); logs in $OUT"
exit $((failed + skipped))
