#!/usr/bin/env bash
# End-to-end SparseGPT prune of a synthetic OPT model of any width and depth, as a user runs it:
# `scalpel prune` reading the Hugging Face folder, calibrating, pruning every layer, committing the
# checkpoint and exporting; the process's wall time, the prune's per-layer phases from its metrics
# (statistics = the forward with the Hessians, factorisation, sweep, reconstruction error, the
# propagating forward, the rest of the layer: the gather and the shard write) and the time outside
# the layers; with --ceilings, bench_layer's same-run ceilings at the same widths on the same device (SGEMM,
# SYRK, factorisation, copy and upload rates). Writes one JSON.
#   benchmarks/bench_e2e.sh [--hidden 12288 --ffn 49152 --heads 96 --layers 1] [--device cuda]
#       [--nsamples 128 --seqlen 2048 --batch 2] [--ceilings] [--set key=value ...] [--out FILE]
# The model is written once to runs/synth-H-F-L (build/bin/make_synthetic_opt; fp16, the opt-mini
# tokenizer) and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
hidden=12288 ffn=49152 heads=96 layers=1 device=cpu nsamples=128 seqlen=2048 batch=2 ceilings=0 out=""
sets=()
while [ $# -gt 0 ]; do
  case $1 in
    --hidden) hidden=$2; shift 2 ;;
    --ffn) ffn=$2; shift 2 ;;
    --heads) heads=$2; shift 2 ;;
    --layers) layers=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --nsamples) nsamples=$2; shift 2 ;;
    --seqlen) seqlen=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --ceilings) ceilings=1; shift ;;
    --set) sets+=("$2"); shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "bench_e2e: unknown argument $1" >&2; exit 2 ;;
  esac
done
BIN=${SCALPEL_BIN_DIR:-build/bin}
# The forward's dtype, for bench_layer's matching ceilings: what the prune resolves (cuda auto on
# this fp16 model: fp16; cpu: fp32) unless a --set names it.
fdt=$([ "$device" = cuda ] && echo fp16 || echo fp32)
for kv in "${sets[@]}"; do
  case $kv in
    "$device.forward_dtype="*) fdt=${kv#*=} ;;
  esac
done
[ "$fdt" = auto ] && fdt=fp16
model=runs/synth-$hidden-$ffn-$layers
run=runs/e2e-$hidden-$ffn-$layers-$device
if [ ! -f "$model/model.safetensors.index.json" ]; then
  "$BIN/make_synthetic_opt" --hidden "$hidden" --ffn "$ffn" --heads "$heads" --layers "$layers" \
    --positions "$seqlen" --tokenizer models/opt-mini --out "$model" > /dev/null
fi
rm -f "$run/metrics.jsonl"  # the metrics file appends; this run's records only
t0=$(date +%s.%N)
"$BIN/scalpel" prune --model "$model" device="$device" calibration.path=data/corpus/calib.txt \
  calibration.nsamples="$nsamples" calibration.seqlen="$seqlen" calibration.batch="$batch" \
  output.dir="$run" output.metrics=metrics.jsonl 'eval.sets=[]' log.progress_seconds=0 "${sets[@]}" --restart \
  > "$run.log" 2>&1 || { echo "bench_e2e: scalpel prune failed; see $run.log" >&2; tail -5 "$run.log" >&2; exit 1; }
t1=$(date +%s.%N)
ceil_json=""
if [ "$ceilings" = 1 ]; then
  ceil_json=$run.ceilings.json
  "$BIN/bench_layer" --device "$device" --hidden "$hidden" --ffn "$ffn" --heads "$heads" --seqlen "$seqlen" \
    --batch "$batch" --nsamples "$nsamples" --layers "$layers" --forward-dtype "$fdt" --repeats 1 \
    --out "$ceil_json" > /dev/null
fi
python3 - "$run/metrics.jsonl" "$t0" "$t1" "$ceil_json" "$out" "$fdt" <<'EOF'
import json, statistics, sys
metrics, ceil_path, out, fdt = sys.argv[1], sys.argv[4], sys.argv[5], sys.argv[6]
process_s = float(sys.argv[3]) - float(sys.argv[2])
layers, prune = [], None
for line in open(metrics):
    r = json.loads(line)
    if r.get("event") == "layer":
        layers.append(r)
    elif r.get("event") == "prune":
        prune = r
per_layer = []
for r in layers:
    lin = r.get("linears", {}).values()
    p = {"seconds": r["seconds"], "statistics_s": r.get("stats_s", 0.0), "reduce_s": r.get("reduce_s", 0.0),
         # The shared factors (one per input group) record their own time; a linear's factor_s
         # counts a factorisation it made itself.
         "factorisation_s": sum(x.get("factor_s", 0.0) for x in lin) + sum(sum(f.get("seconds", [])) for f in r.get("factors", [])),
         "sweep_s": sum(x.get("sweep_s", 0.0) for x in lin),
         "forward_s": r.get("forward_s", 0.0),  # the propagation to the next layer
         "error_s": sum(x.get("error_s", 0.0) for x in lin),
         # the layer's read and upload (or the wait for its prefetch); the pruned rows' download,
         # conversion, gather and packing with the next forward's copy (records of older releases lack them)
         "load_s": r.get("load_s", 0.0),
         "gather_s": sum(x.get("gather_s", 0.0) for x in lin)}
    p["rest_s"] = p["seconds"] - sum(v for k, v in p.items() if k != "seconds")
    per_layer.append(p)
in_layers = sum(p["seconds"] for p in per_layer)
prune_s = prune["summary"]["seconds"] if prune else None
export_s = prune.get("export_s") if prune else None  # the export after the layers (with the zero count)
res = {"forward_dtype": fdt, "process_s": process_s, "prune_s": prune_s, "export_s": export_s, "layers": len(per_layer), "layer_seconds_sum": in_layers,
       "outside_layers_s": process_s - in_layers,
       "outside_layers_fraction": (process_s - in_layers) / process_s if process_s > 0 else None,
       "median_layer": {k: statistics.median(p[k] for p in per_layer) for k in per_layer[0]} if per_layer else {},
       "per_layer": per_layer}
if ceil_path:
    res["ceilings"] = json.load(open(ceil_path))
text = json.dumps(res, indent=2)
print(text)
if out:
    open(out, "w").write(text + "\n")
EOF
