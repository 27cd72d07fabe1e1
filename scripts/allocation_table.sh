#!/usr/bin/env bash
# Reproduces the README's allocation table on opt-mini and llama-mini: Wanda and SparseGPT at
# 50/60/70% with uniform, OWL (M 5, λ 0.08) and sensitivity-aware allocation (per matrix, 8
# Hutchinson probes, α 0.1: the paper's rank rule, and its weighted variant, which hits the target
# by parameters); calibration as the SparseGPT rows (calib.txt, 128 x 512-token windows, seed 0);
# perplexity on the first 100 windows (51,200 tokens) of WikiText-2, PTB and the held-out slice
# (seqlen 512; 48 runs in about 40 minutes on 2 cores); wall time of each run. The sensitivity
# estimate is made once per model (the first run writes allocation.traces, the others read it);
# its seconds are in that run's allocation record.
# Writes runs/allocation_table/<run>/metrics.jsonl and benchmarks/results/allocation_table.json.
#   MODELS=opt-mini METHODS=wanda SPARSITIES=0.7 scripts/allocation_table.sh     # a subset
#   EVAL_WINDOWS=0 scripts/allocation_table.sh                                   # whole evaluation texts
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SCALPEL_SHARED:-../shared}
BIN=${SCALPEL_BIN:-build/bin/scalpel}
SUBSET="${MODELS+x}${METHODS+x}${SPARSITIES+x}${ALLOCS+x}${EVAL_WINDOWS+x}${SCALPEL_TABLE_DIR+x}"  # empty: the whole default table
OUT=${SCALPEL_TABLE_DIR:-runs/allocation_table}
MODELS=${MODELS:-"opt-mini llama-mini"}
METHODS=${METHODS:-"wanda sparsegpt"}
SPARSITIES=${SPARSITIES:-"0.5 0.6 0.7"}
ALLOCS=${ALLOCS:-"uniform owl sensitivity sensitivity-weighted"}
EVAL_WINDOWS=${EVAL_WINDOWS:-100}
[ -x "$BIN" ] || scripts/setup.sh
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
# The whole table starts from an empty folder: a subset's runs left there would become its rows.
if [ -z "$SUBSET" ]; then rm -rf "$OUT"; fi
mkdir -p "$OUT"
# The committed results file (benchmarks/results/) is replaced only by the whole default table; a
# subset, or a run into another SCALPEL_TABLE_DIR, writes its results beside its runs instead.
if [ -z "$SUBSET" ]; then RESULTS=benchmarks/results/allocation_table.json; else RESULTS=$OUT/allocation_table.json; fi
SETS="[{name: wikitext2, preset: wikitext2, path: $SHARED/data/wikitext2/wiki.test.raw.joined.txt}, {name: ptb, preset: ptb, path: $SHARED/data/ptb/ptb.test.txt}, {name: heldout, preset: text, path: $SHARED/data/corpus/heldout.txt}]"
for model in $MODELS; do
  for method in $METHODS; do
    for s in $SPARSITIES; do
      for alloc in $ALLOCS; do
        args=(prune.method=$method prune.sparsity=$s prune.allocation=${alloc%-weighted})
        case $alloc in
          sensitivity*) args+=(allocation.granularity=matrix "allocation.traces=$OUT/traces-$model.json") ;;
        esac
        [ "$alloc" = sensitivity-weighted ] && args+=(allocation.weighted=true)
        run="$model-$method-$s-$alloc"
        dir="$OUT/$run"
        rm -rf "$dir"
        start=$(date +%s.%N)
        "$BIN" prune configs/prune-opt-mini.yaml "model=$SHARED/models/$model" \
          "calibration.path=$SHARED/data/corpus/calib.txt" "${args[@]}" "eval.sets=$SETS" "eval.tasks=[]" \
          eval.batch=8 eval.max_windows=$EVAL_WINDOWS "output.dir=$dir" output.export= log.progress_seconds=0 > "$OUT/$run.log" 2>&1
        end=$(date +%s.%N)
        python3 -c "print(round($end - $start, 1))" > "$dir/wall_seconds"
      done
    done
  done
done
python3 - "$OUT" "$RESULTS" <<'PY'
import json, os, sys
out, results = sys.argv[1], sys.argv[2]
rows = []
for name in sorted(os.listdir(out)):
    m = os.path.join(out, name, "metrics.jsonl")
    if not os.path.exists(m):
        continue
    recs = [json.loads(l) for l in open(m)]
    alloc = next((r for r in recs if r.get("event") == "allocation"), None)
    summary = next((r["summary"] for r in recs if r.get("event") == "prune"), {})
    row = {"run": name, "ppl": {r["set"]: r["ppl"] for r in recs if r.get("event") == "eval"},
           "sparsity": summary.get("sparsity"), "prune_seconds": summary.get("seconds"),
           "wall_seconds": float(open(os.path.join(out, name, "wall_seconds")).read())}
    if alloc:
        row["allocation_seconds"] = alloc["seconds"]
        row["allocated"] = [round(u["sparsity"], 4) for u in alloc.get("blocks", alloc.get("matrices", []))]
        row["scores"] = [u["score"] for u in alloc.get("blocks", alloc.get("matrices", []))]
    rows.append(row)
os.makedirs(os.path.dirname(results), exist_ok=True)
json.dump(rows, open(results, "w"), indent=1)
print(f"results: {results}")
for r in rows:
    print(json.dumps({k: r[k] for k in ("run", "ppl", "sparsity", "wall_seconds")}))
PY
