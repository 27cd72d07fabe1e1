#!/usr/bin/env bash
# launch/mpirun.sh as a user drives it: the rank count in its spellings ("-n 3", "-n3", "-n=3";
# "-n" alone refused with exit 2), and a Ctrl-C in the middle of a 2-rank prune, sent as a
# terminal sends it, to the wrapper's whole process group: the ranks stop after a committed layer
# (exit 75, an "interrupted" record with the SIGUSR1 the wrapper turned it into) and the rerun
# resumes to the bytes of an uninterrupted run. opt-deep's 12 layers leave the stop time to land.
# Usage: bash test_mpirun_wrapper.sh SCALPEL_BIN SOURCE_DIR SHARED_DIR (exit 77: skipped).
set -uo pipefail
BIN=${1:?usage} ROOT=${2:?usage} SHARED=${3:?usage}
WRAP="$ROOT/launch/mpirun.sh"
fail() {
  echo "FAIL: $*"
  exit 1
}
[ -f "$SHARED/models/opt-deep/config.json" ] || { echo "SKIP: $SHARED/models/opt-deep is absent"; exit 77; }
command -v mpirun > /dev/null || { echo "SKIP: no mpirun"; exit 77; }
TMP=$(mktemp -d "${TMPDIR:-/tmp}/scalpel_launch.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
export SCALPEL_BIN="$BIN"

# Arguments: a dry run prints the mpirun command.
for spelling in "-n 3" "-n3" "-n=3" "-np 3"; do
  # shellcheck disable=SC2086  # the spelling splits on purpose
  out=$(SCALPEL_DRY_RUN=1 bash "$WRAP" $spelling eval cfg.yaml 2>&1) || fail "$spelling: exit $?: $out"
  echo "$out" | grep -q -- "mpirun -n 3 " || fail "$spelling: no 'mpirun -n 3' in: $out"
  echo "$out" | grep -q -- " eval cfg.yaml" || fail "$spelling: the command is not passed on: $out"
  echo "$out" | grep -q -- "-n3\|-n=3" && fail "$spelling: the rank count reached scalpel: $out"
done
out=$(SCALPEL_DRY_RUN=1 bash "$WRAP" -n 2>&1)
rc=$?
[ "$rc" = 2 ] || fail "-n without a number: exit $rc (want 2): $out"
echo "$out" | grep -q "needs a number of ranks" || fail "-n without a number: $out"
out=$(SCALPEL_DRY_RUN=1 bash "$WRAP" -n 0 eval 2>&1)
[ $? = 2 ] || fail "-n 0: want exit 2: $out"
# Leading zeros are decimal, as mpirun reads them (bash arithmetic took 08 for bad octal and 010
# for 8); zero nodes and counts past 10^9 are refused with exit 2, not a shell error.
out=$(SCALPEL_DRY_RUN=1 SCALPEL_CORES_PER_NODE=64 bash "$WRAP" -n 010 prune a 2>&1) || fail "-n 010: exit $?: $out"
echo "$out" | grep -q -- "mpirun -n 10 --map-by ppr:10:node:PE=6 " || fail "-n 010: $out"
out=$(SCALPEL_DRY_RUN=1 SCALPEL_THREADS=08 bash "$WRAP" -n 08 prune a 2>&1) || fail "SCALPEL_THREADS=08: exit $?: $out"
echo "$out" | grep -q -- "mpirun -n 8 .* prune a threads=8" || fail "SCALPEL_THREADS=08 -n 08: $out"
out=$(SCALPEL_DRY_RUN=1 SLURM_JOB_NUM_NODES=0 bash "$WRAP" -n 2 prune a 2>&1)
[ $? = 2 ] || fail "SLURM_JOB_NUM_NODES=0: want exit 2: $out"
out=$(SCALPEL_DRY_RUN=1 bash "$WRAP" -n 0000000008 prune a 2>&1) || fail "-n 0000000008: exit $?: $out"
echo "$out" | grep -q -- "mpirun -n 8 " || fail "-n 0000000008: $out"
out=$(SCALPEL_DRY_RUN=1 bash "$WRAP" -n 999999999999999999999 prune a 2>&1)
[ $? = 2 ] || fail "a count past 10^9: want exit 2: $out"
# threads=N reaches prune when --log-level comes first (scalpel --log-level LEVEL COMMAND).
out=$(SCALPEL_DRY_RUN=1 SCALPEL_THREADS=2 bash "$WRAP" -n 2 --log-level debug prune a 2>&1) || fail "log-level: $out"
echo "$out" | grep -q -- "--log-level debug prune a threads=2" || fail "--log-level first: no threads=2 in: $out"
# A binding that is not one (it bound to cores silently), and srun.sh's SLURM_CPUS_PER_TASK that is
# not a count (it reached srun as --cpus-per-task=abc): exit 2 naming the variable.
out=$(SCALPEL_DRY_RUN=1 SCALPEL_BIND=bogus bash "$WRAP" -n 2 prune a 2>&1)
[ $? = 2 ] || fail "SCALPEL_BIND=bogus: want exit 2: $out"
echo "$out" | grep -q "scalpel-launch: SCALPEL_BIND=bogus" || fail "SCALPEL_BIND=bogus: $out"
# The ranks get OMP_WAIT_POLICY=PASSIVE (scalpel restarted itself to set it, and a stop signal
# during that restart killed the rank); a user's value is passed on as it is.
out=$(env -u OMP_WAIT_POLICY SCALPEL_DRY_RUN=1 bash "$WRAP" -n 2 prune a 2>&1) || fail "OMP_WAIT_POLICY: $out"
echo "$out" | grep -q -- "-x OMP_WAIT_POLICY" || fail "OMP_WAIT_POLICY not passed to the ranks: $out"
out=$(SCALPEL_DRY_RUN=1 SCALPEL_THREADS= SLURM_CPUS_PER_TASK=abc bash "$ROOT/launch/srun.sh" -n 2 prune a 2>&1)
[ $? = 2 ] || fail "srun.sh SLURM_CPUS_PER_TASK=abc: want exit 2: $out"
echo "$out" | grep -q "SLURM_CPUS_PER_TASK" || fail "srun.sh SLURM_CPUS_PER_TASK=abc: $out"

# SCALPEL_BIND=none with more ranks than cores oversubscribes (mpirun refused it for want of slots);
# with fewer it does not.
out=$(SCALPEL_DRY_RUN=1 SCALPEL_BIND=none SCALPEL_CORES_PER_NODE=2 bash "$WRAP" -n 4 eval a 2>&1) || fail "none: $out"
echo "$out" | grep -q -- "--bind-to none --oversubscribe" || fail "SCALPEL_BIND=none, 4 ranks on 2 cores: $out"
out=$(SCALPEL_DRY_RUN=1 SCALPEL_BIND=none SCALPEL_CORES_PER_NODE=8 bash "$WRAP" -n 4 eval a 2>&1) || fail "none: $out"
echo "$out" | grep -q -- "--oversubscribe" && fail "SCALPEL_BIND=none, 4 ranks on 8 cores oversubscribes: $out"

# A Ctrl-C to the wrapper mid-prune.
args=(prune --model "$SHARED/models/opt-deep" "calibration.path=$SHARED/data/corpus/calib.txt"
  calibration.nsamples=8 calibration.seqlen=128 calibration.batch=2 prune.method=sparsegpt determinism=strict
  "eval.sets=[]" log.progress_seconds=0)
bash "$WRAP" -n 2 "${args[@]}" "output.dir=$TMP/ref" > "$TMP/ref.log" 2>&1 || fail "reference run: $(cat "$TMP/ref.log")"
# Job control on: a background job of a script otherwise starts with SIGINT ignored, which a
# shell cannot trap (a Ctrl-C at a terminal reaches a foreground wrapper that can).
set -m
bash "$WRAP" -n 2 "${args[@]}" "output.dir=$TMP/cut" > "$TMP/cut.log" 2>&1 &
wrapper=$!
set +m
for _ in $(seq 1 3000); do
  grep -q '"event":"layer"' "$TMP/cut/metrics.jsonl" 2> /dev/null && break
  kill -0 "$wrapper" 2> /dev/null || break
  sleep 0.01
done
kill -INT -- "-$wrapper"  # the group, as a terminal's Ctrl-C: mpirun must not get it
wait "$wrapper"
rc=$?
[ "$rc" = 75 ] || fail "SIGINT to the wrapper: exit $rc (want 75): $(cat "$TMP/cut.log")"
grep -q "got SIGINT: forwarding SIGUSR1" "$TMP/cut.log" || fail "no forwarding line: $(cat "$TMP/cut.log")"
grep -q '"event":"interrupted".*"signal":10\|"signal":10.*"event":"interrupted"' "$TMP/cut/metrics.jsonl" \
  || fail "no interrupted record with signal 10: $(cat "$TMP/cut/metrics.jsonl")"
bash "$WRAP" -n 2 "${args[@]}" "output.dir=$TMP/cut" > "$TMP/resume.log" 2>&1 || fail "resume: $(cat "$TMP/resume.log")"
grep -q "resuming at layer\|nothing to prune" "$TMP/resume.log" || fail "the rerun did not resume: $(cat "$TMP/resume.log")"
cmp "$TMP/ref/model/model.safetensors" "$TMP/cut/model/model.safetensors" || fail "resumed export differs"
echo "PASS"
