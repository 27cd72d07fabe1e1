#!/usr/bin/env bash
# The default job, set-up included: build scalpel, then evaluate the embedded opt-mini model on the
# embedded held-out text (and on WikiText-2 when ../shared/data is present).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
scripts/setup.sh
extra=()
if [ -f ../shared/data/wikitext2/wiki.test.raw.joined.txt ]; then
  extra+=("eval.sets=[{preset: text, name: heldout, path: data/corpus/heldout.txt}, {preset: wikitext2, path: ../shared/data/wikitext2/wiki.test.raw.joined.txt}]")
fi
./build/bin/scalpel eval configs/default.yaml "${extra[@]}"
