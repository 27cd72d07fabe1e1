# shellcheck shell=bash
# Helpers of the `slurm` tests (sourced). Each test is `bash test_X.sh SCALPEL_BIN SOURCE_DIR`;
# it needs a running Slurm (scripts/slurm_setup.sh starts one) and exits 77, which CTest reports
# as skipped, with a SKIP line saying why when there is none.
#
# Environment:
#   SCALPEL_SLURM_TEST_NTASKS  tasks of the submitted jobs (default 2)
#   SCALPEL_SLURM_TEST_KEEP    1: keep the temporary folder (runs, job logs) for a look
#   TMPDIR                     where the temporary folder goes (default /tmp)
set -uo pipefail
# Ranks and tests share few cores: OpenMP threads that spin while waiting would steal them.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

BIN=${1:?usage: $0 SCALPEL_BIN SOURCE_DIR}
ROOT=${2:?usage: $0 SCALPEL_BIN SOURCE_DIR}
NTASKS=${SCALPEL_SLURM_TEST_NTASKS:-2}
JOB=""
TMP=""

say() { echo "[$(date +%T)] $*"; }
skip() {
  echo "SKIP: $*"
  exit 77
}
fail() {
  echo "FAIL: $*"
  if [ -n "$TMP" ] && [ -f "$TMP/job.log" ]; then
    echo "---- job log ($TMP/job.log) ----"
    cat "$TMP/job.log"
    echo "---- end of job log ----"
  fi
  [ -n "$JOB" ] && scontrol show job "$JOB" 2> /dev/null
  exit 1
}
cleanup() {
  if [ -n "$JOB" ] && squeue -h -j "$JOB" -o %T 2> /dev/null | grep . > /dev/null; then
    scancel "$JOB" 2> /dev/null
  fi
  if [ -n "$TMP" ] && [ "${SCALPEL_SLURM_TEST_KEEP:-0}" != 1 ]; then
    rm -rf "$TMP"
  elif [ -n "$TMP" ]; then
    echo "kept $TMP"
  fi
}
trap cleanup EXIT

# Slurm present, its controller answering and a node that can run jobs; else skip.
need_slurm() {
  local c
  for c in sbatch squeue scontrol scancel sinfo; do
    command -v "$c" > /dev/null || skip "no Slurm here ($c not found): run scripts/slurm_setup.sh as root to install and start one"
  done
  scontrol ping 2> /dev/null | grep "is UP" > /dev/null \
    || skip "slurmctld is not answering (scontrol ping): run scripts/slurm_setup.sh as root to start Slurm"
  local states
  states=$(sinfo -h -o %T 2> /dev/null | tr '\n' ' ')
  echo "$states" | grep -Eq '(^| )(idle|mixed|allocated|completing)( |$)' \
    || skip "no Slurm node can run jobs (sinfo: ${states:-nothing}): run scripts/slurm_setup.sh as root"
  local cpus
  cpus=$(sinfo -h -o %c 2> /dev/null | sort -n | tail -1)
  [ "${cpus:-0}" -ge "$NTASKS" ] \
    || skip "the Slurm nodes have ${cpus:-no} CPUs, fewer than the $NTASKS tasks of the jobs (SCALPEL_SLURM_TEST_NTASKS)"
  [ -x "$BIN" ] || fail "no scalpel executable at $BIN"
  [ -f "$ROOT/models/opt-mini/config.json" ] || fail "no $ROOT/models/opt-mini"
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/scalpel-slurm.XXXXXX")
  chmod 755 "$TMP"
}

# The job's field from `scontrol show job` (JobState, Restarts, ExitCode, ...).
job_field() {  # JOBID FIELD
  scontrol show job -o "$1" 2> /dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1
}

# Waits until the condition command succeeds; fails with the message after SECONDS.
wait_until() {  # SECONDS MESSAGE COMMAND...
  local secs=$1 msg=$2 t0=$SECONDS
  shift 2
  until "$@"; do
    [ $((SECONDS - t0)) -ge "$secs" ] && fail "$msg (waited ${secs}s)"
    sleep 0.05
  done
}

job_ended() {  # JOBID: a final state (not pending, running, requeued, completing, ...)
  case "$(job_field "$1" JobState)" in
    COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE | PREEMPTED) return 0 ;;
  esac
  return 1
}

committed_layers() {  # CKPT_DIR
  grep -o '"status": *"committed"' "$1/manifest.json" 2> /dev/null | wc -l
}

# The direct run the Slurm job must reproduce bit for bit: one process, no launcher.
reference_prune() {  # OUTDIR OVERRIDES...
  local out=$1
  shift
  say "reference: $BIN prune configs/prune-opt-mini.yaml $* output.dir=$out"
  (cd "$ROOT" && "$BIN" prune configs/prune-opt-mini.yaml "$@" "output.dir=$out") > "$out.log" 2>&1 \
    || { cat "$out.log"; fail "the direct scalpel prune failed"; }
  [ -s "$out/model/model.safetensors" ] || fail "the direct run wrote no $out/model/model.safetensors"
}

# Submits slurm/opt-mini.sbatch with NTASKS tasks; sets JOB.
submit_opt_mini() {  # OVERRIDES...
  say "sbatch --ntasks=$NTASKS slurm/opt-mini.sbatch $*"
  JOB=$(cd "$ROOT" && SCALPEL_BIN=$BIN sbatch --parsable --ntasks="$NTASKS" --job-name=scalpel-test \
    --output="$TMP/job.log" --chdir="$ROOT" slurm/opt-mini.sbatch "$@") || fail "sbatch refused the job"
  JOB=${JOB%%;*}
  say "job $JOB submitted"
}

same_bytes() {  # A B
  cmp -s "$1" "$2" || fail "$2 differs from the direct run's $1 ($(stat -c %s "$1") vs $(stat -c %s "$2" 2> /dev/null || echo missing) bytes)"
}
