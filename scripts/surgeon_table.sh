#!/usr/bin/env bash
# Reproduces the README's LLM Surgeon table on opt-mini and llama-mini: calibration as the
# SparseGPT rows (calib.txt, 128 x 512-token windows, seed 0); perplexity on WikiText-2, PTB and the
# held-out slice (seqlen 512); wall time of each run. Runs:
#   unstructured 50% and 2:4 in 5 shots (the original's unstructured settings: damp_g 0.1,
#   max_correlate 2000, addupdate);
#   structured (rows and columns) with the paper's 40-shot schedule s_k = k·0.5/40, run to shot 24
#   (prune.sparsity 0.3 in 24 shots is the same schedule), evaluated after shots 8, 16 and 24
#   (10%, 20%, 30%), damp 0.01, max_correlate 0, no addupdate (scripts/structured/surgeon.sh);
#   structured 30% in 8 shots (the short schedule).
# Writes runs/surgeon_table/<run>/metrics.jsonl and benchmarks/results/surgeon_table.json.
#   MODELS=opt-mini RUNS="u50 nm24" scripts/surgeon_table.sh     # a subset
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SCALPEL_SHARED:-../shared}
BIN=${SCALPEL_BIN:-build/bin/scalpel}
SUBSET="${MODELS+x}${RUNS+x}${SCALPEL_TABLE_DIR+x}"  # empty: the whole default table
OUT=${SCALPEL_TABLE_DIR:-runs/surgeon_table}
MODELS=${MODELS:-"opt-mini llama-mini"}
RUNS=${RUNS:-"u50 nm24 s40to30 s8to30"}
[ -x "$BIN" ] || scripts/setup.sh
# The whole table starts from an empty folder: a subset's runs left there would become its rows.
if [ -z "$SUBSET" ]; then rm -rf "$OUT"; fi
mkdir -p "$OUT"
# The committed results file (benchmarks/results/) is replaced only by the whole default table; a
# subset, or a run into another SCALPEL_TABLE_DIR, writes its results beside its runs instead.
if [ -z "$SUBSET" ]; then RESULTS=benchmarks/results/surgeon_table.json; else RESULTS=$OUT/surgeon_table.json; fi
SETS="[{name: wikitext2, preset: wikitext2, path: $SHARED/data/wikitext2/wiki.test.raw.joined.txt}, {name: ptb, preset: ptb, path: $SHARED/data/ptb/ptb.test.txt}, {name: heldout, preset: text, path: $SHARED/data/corpus/heldout.txt}]"
for model in $MODELS; do
  for run in $RUNS; do
    case $run in
      u50) args=(prune.pattern=unstructured prune.sparsity=0.5 surgeon.shots=5 surgeon.damp_g=0.1 surgeon.max_correlate=2000 surgeon.addupdate=true) ;;
      nm24) args=(prune.pattern=2:4 surgeon.shots=5 surgeon.damp_g=0.1 surgeon.max_correlate=2000 surgeon.addupdate=true) ;;
      s40to30) args=(prune.pattern=structured prune.sparsity=0.3 surgeon.shots=24 "surgeon.eval_shots=[8, 16]" surgeon.damp_g=0.01 surgeon.max_correlate=0 surgeon.addupdate=false) ;;
      s8to30) args=(prune.pattern=structured prune.sparsity=0.3 surgeon.shots=8 surgeon.damp_g=0.01 surgeon.max_correlate=0 surgeon.addupdate=false) ;;
      *) echo "unknown run $run" >&2; exit 2 ;;
    esac
    dir="$OUT/$model-$run"
    rm -rf "$dir"
    start=$(date +%s.%N)
    "$BIN" prune configs/surgeon-opt-mini.yaml "model=$SHARED/models/$model" \
      "calibration.path=$SHARED/data/corpus/calib.txt" "${args[@]}" "eval.sets=$SETS" eval.batch=8 \
      "output.dir=$dir" output.export= log.progress_seconds=0 > "$OUT/$model-$run.log" 2>&1
    end=$(date +%s.%N)
    python3 -c "print(round($end - $start, 1))" > "$dir/wall_seconds"
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
    shots = {r["shot"]: r for r in recs if r.get("event") == "shot"}
    evals = {}
    for r in recs:
        if r.get("event") == "eval":
            k = r.get("shot", max(shots) if shots else 0)
            evals.setdefault(k, {})[r["set"]] = r["ppl"]
    summary = next((r["summary"] for r in recs if r.get("event") == "prune"), {})
    for k, e in sorted(evals.items()):
        s = shots.get(k, {})
        rows.append({"run": name, "shot": k, "shots": s.get("shots"), "target": s.get("target"),
                     "reached": s.get("reached"), "ppl": e})
    rows.append({"run": name, "summary": summary,
                 "wall_seconds": float(open(os.path.join(out, name, "wall_seconds")).read())})
os.makedirs(os.path.dirname(results), exist_ok=True)
json.dump(rows, open(results, "w"), indent=1)
print(f"results: {results}")
for r in rows:
    print(json.dumps(r))
PY
