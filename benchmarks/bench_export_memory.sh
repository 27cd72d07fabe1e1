#!/usr/bin/env bash
# Peak memory of `scalpel export` against the size of the model it writes: the export streams the
# pruned tensors from the checkpoint one tensor and one output shard at a time, so its peak stays
# flat as the model grows (before, every pruned tensor was held at once: the peak was the model).
# A synthetic OPT (make_synthetic_opt) of --layers layers is pruned (magnitude 50%, quick) and
# exported with --shard-mb shards; the JSON gives the model's bytes, the export's peak RSS and
# their ratio.
#   benchmarks/bench_export_memory.sh [--layers 48] [--hidden 1024] [--shard-mb 100] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
layers=48 hidden=1024 shard=100 out=""
while [ $# -gt 0 ]; do
  case $1 in
    --layers) layers=$2; shift 2 ;;
    --hidden) hidden=$2; shift 2 ;;
    --shard-mb) shard=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "bench_export_memory: unknown argument $1" >&2; exit 2 ;;
  esac
done
BIN=${SCALPEL_BIN_DIR:-build/bin}
model=runs/synth-$hidden-$((4 * hidden))-$layers
run=runs/export-memory-$hidden-$layers
[ -f "$model/model.safetensors.index.json" ] ||
  "$BIN/make_synthetic_opt" --hidden "$hidden" --ffn $((4 * hidden)) --heads $((hidden / 64)) --layers "$layers" \
    --positions 256 --out "$model" > /dev/null
OMP_WAIT_POLICY=PASSIVE "$BIN/scalpel" prune --model "$model" prune.method=magnitude calibration.path=data/corpus/calib.txt \
  calibration.nsamples=4 calibration.seqlen=128 calibration.batch=4 output.dir="$run" 'eval.sets=[]' \
  log.progress_seconds=0 output.export= --restart > "$run.log" 2>&1
python3 - "$BIN/scalpel" "$run" "$model" "$shard" "$out" <<'PY'
import json, os, resource, shutil, subprocess, sys
scalpel, run, model, shard, out = sys.argv[1:6]
dest = run + "/export"
shutil.rmtree(dest, ignore_errors=True)
subprocess.run([scalpel, "export", "--checkpoint", run + "/ckpt", "--out", dest, "--shard-mb", shard], check=True,
               capture_output=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
size = sum(os.path.getsize(os.path.join(dest, f)) for f in os.listdir(dest) if f.endswith(".safetensors"))
res = {"model": model, "export_bytes": size, "shard_mb": int(shard), "export_peak_rss_bytes": peak,
       "peak_over_model": peak / size}
print(json.dumps(res, indent=2))
if out:
    open(out, "w").write(json.dumps(res, indent=2) + "\n")
PY
