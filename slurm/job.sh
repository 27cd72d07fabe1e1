# shellcheck shell=bash
# Sourced by the batch scripts in slurm/ (not a batch script itself). scalpel_job runs one scalpel
# command as the job step through launch/srun.sh or launch/mpirun.sh, forwards the preemption
# signal to it, and requeues the job when scalpel exits 75 (interrupted after committing a layer).
#
#   the job                       batch shell (this code)        step (srun/mpirun -> scalpel ranks)
#   SIGUSR1 <seconds> before  --> trap: SIGUSR1 to the step  --> finish the layer, commit, exit 75
#   the time limit, or from       exit 75 -> scontrol requeue
#   scancel -s USR1 -b JOBID      $SLURM_JOB_ID, exit
#   SIGTERM (scancel JOBID,   --> trap: SIGUSR1 to the step  --> the same, if it has the time
#   scontrol requeue, Slurm's     exit 75, no requeue: a cancelled job stays cancelled; one that
#   own preemption)               Slurm requeues starts again by itself (a SIGTERM after the
#                                 SIGUSR1, the time limit's own, still requeues)
#   restart (same job id, SLURM_RESTART_COUNT=1, 2, ...): the same command; scalpel prune resumes
#   after the last committed layer of output.dir/ckpt. Logs append (--open-mode=append).
#
# Environment read here (each batch script documents these at its top too):
#   SCALPEL_LAUNCHER      srun (default) or mpirun: which launch/ wrapper starts the ranks
#   SCALPEL_MAX_REQUEUES  requeue at most this many times (default 20); past it, exit 75
#   SLURM_JOB_ID, SLURM_RESTART_COUNT, SLURM_JOB_NODELIST, SLURM_NTASKS (set by Slurm)
# and, through the launch wrappers, the variables documented in launch/srun.sh and launch/mpirun.sh.

scalpel_job_log() { echo "[$(date -u +%Y-%m-%dT%H:%M:%SZ)] scalpel-job: $*"; }

# scalpel_job ROOT COMMAND ARGS...: runs `scalpel COMMAND ARGS...` over the job's tasks; exits.
scalpel_job() {
  local root=$1
  shift
  local launcher=${SCALPEL_LAUNCHER:-srun}
  local wrapper=$root/launch/$launcher.sh
  if [ ! -x "$wrapper" ]; then
    scalpel_job_log "SCALPEL_LAUNCHER=$launcher: no executable $wrapper (srun or mpirun)"
    exit 2
  fi
  local restarts=${SLURM_RESTART_COUNT:-0} max=${SCALPEL_MAX_REQUEUES:-20}
  if ! [[ $max =~ ^[0-9]+$ ]]; then
    scalpel_job_log "SCALPEL_MAX_REQUEUES=$max: expected a count (0, 1, 2, ...; default 20)"
    exit 2
  fi
  [[ $restarts =~ ^[0-9]+$ ]] || restarts=0  # Slurm sets it; anything else counts as a first run
  # --restart and --restart-from L discard what an earlier run kept: meant for the job's first run,
  # they would discard the committed layers again at every requeue (and the job would loop until
  # SCALPEL_MAX_REQUEUES).
  if [ "$restarts" -gt 0 ]; then
    local a kept=() flag=""
    for a in "$@"; do
      if [ -n "$flag" ]; then
        _scalpel_job_left_out "$restarts" "$flag $a"
        flag=""
      elif [ "$a" = --restart-from ]; then
        flag=$a  # its value is the next argument
      elif [ "$a" = --restart ] || [[ $a == --restart-from=* ]]; then
        _scalpel_job_left_out "$restarts" "$a"
      else
        kept+=("$a")
      fi
    done
    set -- "${kept[@]}"
  fi
  scalpel_job_log "job ${SLURM_JOB_ID:-?} (restart $restarts) on ${SLURM_JOB_NODELIST:-?}," \
    "${SLURM_NTASKS:-1} task(s): $launcher scalpel $*"

  # The traps go in before the step starts: a signal in between reaches the step once it exists.
  _scalpel_job_step=""
  _scalpel_job_signalled=0
  _scalpel_job_term=0
  trap '_scalpel_job_forward USR1' USR1
  trap '_scalpel_job_forward TERM' TERM
  "$wrapper" "$@" &
  _scalpel_job_step=$!
  [ "$_scalpel_job_signalled" = 1 ] && kill -s USR1 "$_scalpel_job_step" 2> /dev/null
  local rc=0 again
  while :; do
    wait "$_scalpel_job_step"
    rc=$?
    kill -0 "$_scalpel_job_step" 2> /dev/null || break  # a trap interrupts `wait` with rc > 128
  done
  if [ "$_scalpel_job_signalled" = 1 ] && [ "$rc" -gt 128 ]; then
    wait "$_scalpel_job_step" 2> /dev/null
    again=$?
    [ "$again" -ne 127 ] && rc=$again
  fi
  # Slurm sends SIGTERM to this shell when `scontrol requeue` below takes effect: let it finish.
  trap '' USR1 TERM
  # 128 + SIGUSR1 = killed by the SIGUSR1 forwarded above. prune and depth take it from their
  # first line, so it reached a rank before that (the first moments of the step: srun, the loading
  # of the libraries), when nothing was done yet: an interruption like any other (it made the job
  # FAILED). Not with --restart (the discard it asks for may not have happened, and a requeue
  # leaves it out), nor for the commands without stopping points (eval, export: redoing them at
  # every requeue would not end).
  local command
  command=$(_scalpel_job_command "$@")
  if [ "$_scalpel_job_signalled" = 1 ] && [ "$rc" = $((128 + $(kill -l USR1))) ] \
    && { [ "$command" = prune ] || [ "$command" = depth ]; } && ! _scalpel_job_has_restart "$@"; then
    scalpel_job_log "the step died of the SIGUSR1 forwarded to it before scalpel could take it (its start-up);" \
      "nothing was lost: treated as interrupted (exit 75)"
    rc=75
  fi

  case "$rc" in
    0)
      scalpel_job_log "scalpel $1 finished (exit 0)"
      exit 0
      ;;
    75)
      if [ -z "${SLURM_JOB_ID:-}" ]; then
        scalpel_job_log "interrupted (exit 75: what was done is kept), not in a Slurm job: run the same command to resume"
        exit 75
      fi
      if [ "$restarts" -ge "$max" ]; then
        scalpel_job_log "interrupted (exit 75) after $restarts restarts, SCALPEL_MAX_REQUEUES=$max: not requeueing;" \
          "resubmit the same job to resume"
        exit 75
      fi
      if [ "$_scalpel_job_term" = 1 ]; then
        # scancel, an `scontrol requeue` from outside, or Slurm's own preemption: Slurm decides
        # whether the job comes back; requeueing it here would undo a cancel.
        scalpel_job_log "stopped after SIGTERM (exit 75; JobState=$(_scalpel_job_state)): not requeueing;" \
          "a job Slurm requeued starts again by itself, a cancelled one resumes when resubmitted"
        exit 75
      fi
      scalpel_job_log "interrupted (exit 75: what was done is kept): requeueing job $SLURM_JOB_ID"
      if scontrol requeue "$SLURM_JOB_ID"; then
        exit 75  # this instance ends as REQUEUED; the job starts again and resumes
      fi
      scalpel_job_log "scontrol requeue $SLURM_JOB_ID failed (--no-requeue, or JobRequeue=0?; JobState=$(_scalpel_job_state)):" \
        "resubmit the same job to resume"
      exit 75
      ;;
    *)
      scalpel_job_log "scalpel $1 failed (exit $rc)"
      exit "$rc"
      ;;
  esac
}

# The scalpel command of the arguments: the first word that is not an option (--log-level takes one).
_scalpel_job_command() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --log-level) shift 2 ;;
      -*) shift ;;
      *) echo "$1"; return 0 ;;
    esac
  done
}

_scalpel_job_left_out() {  # RESTARTS WHAT
  scalpel_job_log "restart $1: $2 left out (it is for the first run; here it would discard what the earlier runs" \
    "of this job committed)"
}

_scalpel_job_has_restart() {
  local a
  for a in "$@"; do [ "$a" = --restart ] || [ "$a" = --restart-from ] || [[ $a == --restart-from=* ]] && return 0; done
  return 1
}

# The job's state as Slurm has it now (COMPLETING after a cancel, REQUEUED, ...), or "?".
_scalpel_job_state() {
  local st
  st=$(scontrol show job -o "${SLURM_JOB_ID:-}" 2> /dev/null | grep -o 'JobState=[A-Z_]*' | head -1)
  st=${st#JobState=}
  echo "${st:-?}"
}

# A SIGTERM with no SIGUSR1 before it is a cancel (or Slurm's own requeue or preemption); one
# after the time-limit SIGUSR1 is the time limit itself, and the job still requeues.
_scalpel_job_forward() {
  [ "$1" = TERM ] && [ "$_scalpel_job_signalled" = 0 ] && _scalpel_job_term=1
  _scalpel_job_signalled=1
  scalpel_job_log "got SIG$1: asking scalpel to stop after the current layer (SIGUSR1 to the step)"
  [ -n "$_scalpel_job_step" ] && kill -s USR1 "$_scalpel_job_step" 2> /dev/null
  return 0
}
