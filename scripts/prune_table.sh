#!/usr/bin/env bash
# Reproduces the README's pruning table: opt-mini and llama-mini, dense and pruned with magnitude,
# Wanda and SparseGPT (50%, 2:4, 4:8, 70%, 80%), calibrated on ../shared/data/corpus/calib.txt with
# 128 x 512-token windows, seed 0; perplexity on WikiText-2, PTB and the held-out slice; mean
# per-layer relative reconstruction error; zero-shot accuracy on the Brown cloze and LAMBADA-style
# files of data/tasks and the hand-written tests/data/tasks/everyday_mc.jsonl. tokenizer.mode is
# transformers (the default); the config "dense-sentencepiece" evaluates the dense model with
# tokenizer.mode=sentencepiece instead. Writes runs/table/results.{md,json}, and the whole table's
# JSON to benchmarks/results/prune_table.json.
#   MODELS="opt-mini" CONFIGS="sparsegpt:0.5:unstructured" scripts/prune_table.sh   # a subset
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SCALPEL_SHARED:-../shared}
BIN=${SCALPEL_BIN:-build/bin/scalpel}
SUBSET="${MODELS+x}${CONFIGS+x}${SCALPEL_TABLE_DIR+x}"  # empty: the whole default table
OUT=${SCALPEL_TABLE_DIR:-runs/table}
MODELS=${MODELS:-"opt-mini llama-mini"}
CONFIGS=${CONFIGS:-"dense dense-sentencepiece magnitude:0.5:unstructured wanda:0.5:unstructured wanda:0.5:2:4 sparsegpt:0.5:unstructured sparsegpt:0.5:2:4 sparsegpt:0.5:4:8 magnitude:0.7:unstructured wanda:0.7:unstructured sparsegpt:0.7:unstructured magnitude:0.8:unstructured wanda:0.8:unstructured sparsegpt:0.8:unstructured"}
[ -x "$BIN" ] || scripts/setup.sh
# The whole table starts from an empty folder: a subset's runs left there would become its rows.
if [ -z "$SUBSET" ]; then rm -rf "$OUT"; fi
mkdir -p "$OUT"
# The committed results file (benchmarks/results/) is replaced only by the whole default table; a
# subset, or a run into another SCALPEL_TABLE_DIR, writes its results beside its runs instead.
# (prune_table_summary.py writes $OUT/results.{md,json}; the whole table's JSON is copied to
# benchmarks/results/prune_table.json at the end.)
TASKS="[{name: cloze, preset: mc, path: data/tasks/brown_cloze.jsonl}, {name: lambada, preset: lambada, path: data/tasks/brown_lambada.jsonl}, {name: everyday, preset: mc, path: tests/data/tasks/everyday_mc.jsonl}]"
SETS="[{name: wikitext2, preset: wikitext2, path: $SHARED/data/wikitext2/wiki.test.raw.joined.txt}, {name: ptb, preset: ptb, path: $SHARED/data/ptb/ptb.test.txt}, {name: heldout, preset: text, path: $SHARED/data/corpus/heldout.txt}]"
for model in $MODELS; do
  for cfg in $CONFIGS; do
    run="$OUT/$model-${cfg//:/-}"
    # Byte-level BPE has one tokenizer behaviour: the sentencepiece row is for SentencePiece models.
    if [ "$cfg" = dense-sentencepiece ] && [ ! -f "$SHARED/models/$model/tokenizer.model" ]; then continue; fi
    # A fresh run each time: a kept checkpoint resumed a stopped evaluation, whose records went
    # with the metrics file removed here, and its row was dropped.
    rm -rf "$run"
    if [ "$cfg" = dense ] || [ "$cfg" = dense-sentencepiece ]; then
      mode=transformers
      [ "$cfg" = dense-sentencepiece ] && mode=sentencepiece
      "$BIN" eval --model "$SHARED/models/$model" "eval.sets=$SETS" "eval.tasks=$TASKS" eval.batch=8 \
        "tokenizer.mode=$mode" "output.dir=$run" log.progress_seconds=0
    else
      IFS=: read -r method sparsity pattern <<<"$cfg"
      "$BIN" prune --model "$SHARED/models/$model" "prune.method=$method" "prune.sparsity=$sparsity" \
        "prune.pattern=$pattern" "calibration.path=$SHARED/data/corpus/calib.txt" calibration.nsamples=128 \
        calibration.seqlen=512 calibration.seed=0 "eval.sets=$SETS" "eval.tasks=$TASKS" eval.batch=8 \
        "output.dir=$run" output.export= \
        log.progress_seconds=0
    fi
  done
done
python3 scripts/prune_table_summary.py "$OUT"
if [ -z "$SUBSET" ]; then cp "$OUT/results.json" benchmarks/results/prune_table.json; fi
