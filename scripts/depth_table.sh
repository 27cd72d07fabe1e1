#!/usr/bin/env bash
# Reproduces the README's depth-pruning table: on opt-mini, llama-mini and opt-deep, remove 1 and 2
# decoder blocks by each criterion (bi, angular, ppl, laco), calibrated on calib.txt with 128
# windows of 512 tokens (seed 0); perplexity of the result on WikiText-2, PTB and the held-out
# slice (seqlen 512; the first EVAL_WINDOWS = 128 windows of each, 65,536 tokens, to fit the run
# in about 20 minutes on 2 cores; EVAL_WINDOWS=0 evaluates every window), next to the dense model's. LaCo merges n + 1 blocks into one (depth.merge),
# threshold 0.45 on 16 calibration windows; a LaCo run that accepts no merge removes nothing (its
# row says so). A removal that another criterion already chose (same blocks, no merge) is
# evaluated once: its row names the run it reuses.
# Writes runs/depth_table/<model>-<criterion>-<n>/ (metrics, export, logs) and
# benchmarks/results/depth_table.json, and prints every run's per-block scores.
#   MODELS=opt-mini CRITERIA="bi ppl" REMOVES=1 scripts/depth_table.sh     # a subset
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SCALPEL_SHARED:-../shared}
BIN=${SCALPEL_BIN:-build/bin/scalpel}
SUBSET="${MODELS+x}${CRITERIA+x}${REMOVES+x}${EVAL_WINDOWS+x}${SCALPEL_TABLE_DIR+x}"  # empty: the whole default table
OUT=${SCALPEL_TABLE_DIR:-runs/depth_table}
MODELS=${MODELS:-"opt-mini llama-mini opt-deep"}
CRITERIA=${CRITERIA:-"bi angular ppl laco"}
REMOVES=${REMOVES:-"1 2"}
EVAL_WINDOWS=${EVAL_WINDOWS:-128}
[ -x "$BIN" ] || scripts/setup.sh
# The whole table starts from an empty folder: a subset's runs left there would become its rows.
if [ -z "$SUBSET" ]; then rm -rf "$OUT"; fi
mkdir -p "$OUT"
# The committed results file (benchmarks/results/) is replaced only by the whole default table; a
# subset, or a run into another SCALPEL_TABLE_DIR, writes its results beside its runs instead.
if [ -z "$SUBSET" ]; then RESULTS=benchmarks/results/depth_table.json; else RESULTS=$OUT/depth_table.json; fi
SETS="[{name: wikitext2, preset: wikitext2, path: $SHARED/data/wikitext2/wiki.test.raw.joined.txt}, {name: ptb, preset: ptb, path: $SHARED/data/ptb/ptb.test.txt}, {name: heldout, preset: text, path: $SHARED/data/corpus/heldout.txt}]"
CALIB=("calibration.path=$SHARED/data/corpus/calib.txt" calibration.nsamples=128 calibration.seqlen=512
       calibration.seed=0 calibration.batch=8)
now() { date +%s.%N; }
secs() { python3 -c "print(round($2 - $1, 1))"; }
# The removal a run made, as a key: removed blocks and merged groups.
key_of() { python3 -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if '\"depth\"' in l][-1]; print(json.dumps([r['removed'], r.get('merged', [])]))" "$1"; }

for model in $MODELS; do
  dense="$OUT/$model-dense"
  rm -rf "$dense"
  t0=$(now)
  "$BIN" eval --model "$SHARED/models/$model" "eval.sets=$SETS" eval.seqlen=512 eval.batch=8 eval.max_windows=$EVAL_WINDOWS \
    "output.dir=$dense" log.progress_seconds=0 > "$OUT/$model-dense.log" 2>&1
  secs "$t0" "$(now)" > "$dense/eval_seconds"
  declare -A seen=()
  for crit in $CRITERIA; do
    for n in $REMOVES; do
      dir="$OUT/$model-$crit-$n"
      rm -rf "$dir"
      extra=()
      [ "$crit" = laco ] && extra=(depth.merge=$((n + 1)) depth.threshold=0.45 depth.windows=16 depth.interval=1)
      t0=$(now)
      "$BIN" depth --model "$SHARED/models/$model" "${CALIB[@]}" depth.criterion=$crit depth.remove=$n "${extra[@]}" \
        "output.dir=$dir" log.progress_seconds=0 > "$OUT/$model-$crit-$n.log" 2>&1
      secs "$t0" "$(now)" > "$dir/depth_seconds"
      key=$(key_of "$dir/metrics.jsonl")
      if [ "$key" = '[[], []]' ]; then
        echo "$model-dense" > "$dir/eval_reused"
      elif [ -n "${seen[$key]:-}" ]; then
        echo "${seen[$key]}" > "$dir/eval_reused"
      else
        seen[$key]="$model-$crit-$n"
        t0=$(now)
        "$BIN" eval --model "$dir/model" "eval.sets=$SETS" eval.seqlen=512 eval.batch=8 eval.max_windows=$EVAL_WINDOWS "output.dir=$dir/eval" \
          log.progress_seconds=0 > "$dir/eval.log" 2>&1
        secs "$t0" "$(now)" > "$dir/eval_seconds"
      fi
    done
  done
  unset seen
done

python3 - "$OUT" "$RESULTS" <<'PY'
import json, os, sys
out, results = sys.argv[1], sys.argv[2]
def evals(path):
    if not os.path.exists(path):
        return None
    return {r["set"]: r["ppl"] for r in map(json.loads, open(path)) if r.get("event") == "eval"}
def read(path, default=None):
    return open(path).read().strip() if os.path.exists(path) else default
rows = []
for name in sorted(os.listdir(out)):
    d = os.path.join(out, name)
    if not os.path.isdir(d):
        continue
    if name.endswith("-dense"):
        rows.append({"run": name, "model": name[:-6], "criterion": "dense", "remove": 0,
                     "ppl": evals(os.path.join(d, "metrics.jsonl")), "eval_seconds": float(read(os.path.join(d, "eval_seconds"), "nan"))})
        continue
    recs = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
    dep = [r for r in recs if r.get("event") == "depth"][-1]
    reused = read(os.path.join(d, "eval_reused"))
    src = os.path.join(out, reused, "metrics.jsonl") if reused and reused.endswith("-dense") else \
          os.path.join(out, reused or name, "eval", "metrics.jsonl")
    row = {"run": name, "model": dep["model"].rstrip("/").split("/")[-1], "criterion": dep["criterion"],
           "remove": int(name.rsplit("-", 1)[1]), "removed": dep["removed"], "kept": dep["kept"],
           "scores": dep["scores"], "ppl": evals(src), "eval_reused_from": reused,
           "depth_seconds": float(read(os.path.join(d, "depth_seconds"), "nan")),
           "select_seconds": dep["seconds"]}
    for k in ("merged", "attempts", "rounds"):
        if k in dep:
            row[k] = dep[k]
    rows.append(row)
os.makedirs(os.path.dirname(results), exist_ok=True)
json.dump(rows, open(results, "w"), indent=1)
print(f"results: {results}")
for r in rows:
    ppl = r["ppl"] or {}
    print(f'{r["run"]:28} removed {str(r.get("removed", "-")):10} merged {str(r.get("merged", "-")):14} '
          + " ".join(f'{k} {v:9.2f}' for k, v in ppl.items())
          + (f'  (eval of {r["eval_reused_from"]})' if r.get("eval_reused_from") else ""))
    if "scores" in r:
        print("    scores " + json.dumps([round(s, 5) if s is not None else None for s in r["scores"]]))
PY
