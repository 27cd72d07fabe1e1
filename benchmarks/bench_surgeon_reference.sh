#!/usr/bin/env bash
# The whole LLM Surgeon run (load, calibration, all shots, export) of scalpel against the original
# code's (Qualcomm-AI-research/llm-surgeon) on the same machine in the same benchmark run, one after
# the other: unstructured 50% in 5 shots on opt-mini with the original's unstructured settings
# (scripts/unstructured/surgeon_5.sh: damp_g 0.1, max_correlate 2000, addupdate), 128 x 512-token
# calibration windows, seed 0, fp32, 2 threads, no evaluation. The original is not part of this
# repository: point REFERENCE_CMD at a command that runs a copy of it (with stubs for data and
# model loading; see README "LLM Surgeon"); without it only scalpel is timed.
#   REFERENCE_CMD="cd /tmp/surgeon_ref && python3 driver.py ..." benchmarks/bench_surgeon_reference.sh out.json
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bench_surgeon_reference.json}
SHARED=${SCALPEL_SHARED:-../shared}
BIN=${SCALPEL_BIN:-build/bin/scalpel}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$OUT")"
# A step that fails shows the end of its log (the trap removes the folder that holds it).
run_logged() {
  local log=$1
  shift
  if ! "$@" > "$log" 2>&1; then
    echo "bench_surgeon_reference.sh: failed: $*" >&2
    tail -n 20 "$log" >&2
    exit 2
  fi
}
t0=$(date +%s.%N)
run_logged "$work/scalpel.log" env OMP_WAIT_POLICY=PASSIVE "$BIN" prune configs/surgeon-opt-mini.yaml \
  "model=$SHARED/models/opt-mini" "calibration.path=$SHARED/data/corpus/calib.txt" "eval.sets=[]" threads=2 \
  "output.dir=$work/scalpel" log.progress_seconds=0
t1=$(date +%s.%N)
scalpel_s=$(python3 -c "print($t1 - $t0)")
reference_s=null
if [ -n "${REFERENCE_CMD:-}" ]; then
  t2=$(date +%s.%N)
  run_logged "$work/reference.log" bash -c "$REFERENCE_CMD"
  t3=$(date +%s.%N)
  reference_s=$(python3 -c "print($t3 - $t2)")
fi
python3 - "$OUT" "$scalpel_s" "$reference_s" "$work/scalpel/metrics.jsonl" <<'PY'
import json, sys, platform, os, datetime
out, s, r, metrics = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
r = None if r == "null" else float(r)
summary = [json.loads(l) for l in open(metrics) if '"event": "prune"' in l or '"event":"prune"' in l]
res = {"job": "opt-mini, surgeon unstructured 50%, 5 shots, 128 x 512 calibration, damp_g 0.1, max_correlate 2000",
       "date": datetime.datetime.utcnow().isoformat() + "Z", "machine": platform.processor() or platform.machine(),
       "cpus": os.cpu_count(), "scalpel_s": s, "reference_s": r, "speedup": (r / s) if r else None,
       "scalpel_summary": summary[-1]["summary"] if summary else None}
json.dump(res, open(out, "w"), indent=2)
print(json.dumps(res, indent=2))
PY
