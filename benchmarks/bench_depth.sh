#!/usr/bin/env bash
# Eval speed of a depth-pruned model against the dense one, in the same run: scalpel depth removes
# 3 of opt-deep's 12 blocks (configs/depth-opt-deep.yaml, Block Influence), then bench_eval times
# the dense and the pruned export alternately (dense, pruned, dense, pruned; each the median of
# its repeats) on the same text, windows and threads. With every block the same size, the pruned
# model should run at about 12/9 = 1.33 times the dense tokens/s, less the share of the embeddings
# and the LM head, which do not shrink. Writes $SCALPEL_BENCH_DIR/depth_speed.json, and replaces
# benchmarks/results/depth_speed.json only when run with the recorded settings (WINDOWS 8,
# REPEATS 5, THREADS 0): a quick run at other settings does not overwrite the committed figures.
#   SCALPEL_BUILD_DIR=build-depth benchmarks/bench_depth.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${SCALPEL_BUILD_DIR:-build}
SHARED=${SCALPEL_SHARED:-../shared}
OUT=${SCALPEL_BENCH_DIR:-runs/bench_depth}
WINDOWS=${WINDOWS:-8}
REPEATS=${REPEATS:-5}
THREADS=${THREADS:-0}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
rm -rf "$OUT"
mkdir -p "$OUT"
if ! "$BUILD/bin/scalpel" depth configs/depth-opt-deep.yaml "model=$SHARED/models/opt-deep" "eval.sets=[]" \
  "output.dir=$OUT" log.progress_seconds=0 > "$OUT/depth.log" 2>&1; then
  echo "bench_depth.sh: scalpel depth failed; the end of $OUT/depth.log:" >&2
  tail -n 20 "$OUT/depth.log" >&2
  exit 2
fi
RECORD=0
[ "$WINDOWS" = 8 ] && [ "$REPEATS" = 5 ] && [ "$THREADS" = 0 ] && RECORD=1
for pass in 1 2; do
  for which in dense pruned; do
    model="$SHARED/models/opt-deep"
    [ "$which" = pruned ] && model="$OUT/model"
    "$BUILD/bin/bench_eval" --model "$model" --text data/corpus/heldout.txt --seqlen 512 --windows "$WINDOWS" \
      --batch 1 --repeats "$REPEATS" --threads "$THREADS" --out "$OUT/$which-$pass.json" > /dev/null
  done
done
python3 - "$OUT" "$RECORD" <<'PY'
import json, statistics, sys
out, record = sys.argv[1], sys.argv[2] == "1"
dep = [json.loads(l) for l in open(f"{out}/metrics.jsonl") if '"depth"' in l][-1]
runs = {w: [json.load(open(f"{out}/{w}-{p}.json")) for p in (1, 2)] for w in ("dense", "pruned")}
tps = {w: [r["tokens_per_second"] for r in rs] for w, rs in runs.items()}
med = {w: statistics.median(v) for w, v in tps.items()}
blocks = dep["original_blocks"], dep["remaining_blocks"]
res = {"benchmark": "depth_speed", "model": "opt-deep", "criterion": dep["criterion"], "removed": dep["removed"],
       "blocks_dense": blocks[0], "blocks_pruned": blocks[1],
       "threads": runs["dense"][0]["threads"], "seqlen": runs["dense"][0]["seqlen"],
       "windows": runs["dense"][0]["windows"], "repeats": runs["dense"][0]["repeats"],
       "tokens_per_second": tps, "tokens_per_second_median": med,
       "speedup": med["pruned"] / med["dense"], "blocks_ratio": blocks[0] / blocks[1],
       "linear_share_of_forward": {w: rs[0]["linear_share_of_forward"] for w, rs in runs.items()},
       "provenance": runs["dense"][0].get("provenance")}
json.dump(res, open(f"{out}/depth_speed.json", "w"), indent=1)
if record:
    json.dump(res, open("benchmarks/results/depth_speed.json", "w"), indent=1)
print(json.dumps(res, indent=1))
print(("recorded in benchmarks/results/depth_speed.json" if record else
       f"not recorded (settings other than WINDOWS=8 REPEATS=5 THREADS=0): {out}/depth_speed.json"), file=sys.stderr)
PY
