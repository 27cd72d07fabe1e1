#!/usr/bin/env bash
# slurm/job.sh's decisions without a Slurm: a stand-in step (exits 75 when it gets SIGUSR1, as
# scalpel does after committing a layer) and a stand-in `scontrol` that logs its calls. SIGUSR1
# to the batch shell (the time-limit warning, `scancel -s USR1 -b`) requeues the job; SIGTERM (a
# plain `scancel`, which requeued and finished a cancelled job) stops the step and does not; a
# SCALPEL_MAX_REQUEUES that is not a count is refused with exit 2 (it meant no limit); a SIGTERM
# after the SIGUSR1 (the time limit's own) still requeues; a step the forwarded SIGUSR1 killed
# (exit 138) requeues; --restart is left out of a requeued run.
# Usage: bash test_job_sh.sh SOURCE_DIR
set -uo pipefail
ROOT=${1:?usage: $0 SOURCE_DIR}
fail() {
  echo "FAIL: $*"
  exit 1
}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/scalpel_job_sh.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/root/launch" "$TMP/bin"
cat > "$TMP/root/launch/fake.sh" <<'STEP'
#!/usr/bin/env bash
trap 'echo "step: SIGUSR1, exiting 75"; sleep 0.5; exit 75' USR1
echo "step: started $*"
for _ in $(seq 600); do sleep 0.1; done
exit 0
STEP
cat > "$TMP/bin/scontrol" <<STUB
#!/usr/bin/env bash
echo "\$*" >> "$TMP/scontrol.calls"
[ "\$1" = show ] && echo "JobId=\${3:-?} JobState=RUNNING Restarts=0"
exit 0
STUB
chmod +x "$TMP/root/launch/fake.sh" "$TMP/bin/scontrol"

# run_job SIGNAL...: the job in the background, the signals to its shell (0.2 s apart) once the
# step runs; its exit code.
run_job() {
  rm -f "$TMP/scontrol.calls" "$TMP/job.log"
  PATH="$TMP/bin:$PATH" SCALPEL_LAUNCHER=fake SLURM_JOB_ID=4242 \
    bash -c "source '$ROOT/slurm/job.sh'; scalpel_job '$TMP/root' prune cfg.yaml" > "$TMP/job.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do grep -q "step: started" "$TMP/job.log" 2> /dev/null && break; sleep 0.1; done
  grep -q "step: started" "$TMP/job.log" || fail "the stand-in step did not start: $(cat "$TMP/job.log")"
  local sig
  for sig in "$@"; do
    kill -s "$sig" "$pid"
    sleep 0.2
  done
  wait "$pid"
}

run_job USR1
rc=$?
[ "$rc" = 75 ] || fail "SIGUSR1: exit $rc, want 75: $(cat "$TMP/job.log")"
grep -q "requeue 4242" "$TMP/scontrol.calls" 2> /dev/null || fail "SIGUSR1: no scontrol requeue: $(cat "$TMP/job.log")"
grep -q "requeueing job 4242" "$TMP/job.log" || fail "SIGUSR1: the log does not say it requeues: $(cat "$TMP/job.log")"

run_job TERM
rc=$?
[ "$rc" = 75 ] || fail "SIGTERM: exit $rc, want 75: $(cat "$TMP/job.log")"
grep -q "step: SIGUSR1" "$TMP/job.log" || fail "SIGTERM: the step was not asked to stop: $(cat "$TMP/job.log")"
grep -q "requeue" "$TMP/scontrol.calls" 2> /dev/null && fail "SIGTERM: the job requeued itself: $(cat "$TMP/scontrol.calls")"
grep -q "stopped after SIGTERM (exit 75; JobState=RUNNING): not requeueing" "$TMP/job.log" \
  || fail "SIGTERM: the log does not say it leaves the job to Slurm: $(cat "$TMP/job.log")"

# The time limit: SIGUSR1 ahead of it, then its own SIGTERM while the step still finishes its
# layer: still a requeue (only a SIGTERM with no SIGUSR1 before it is a cancel).
run_job USR1 TERM
rc=$?
[ "$rc" = 75 ] || fail "SIGUSR1 then SIGTERM: exit $rc, want 75: $(cat "$TMP/job.log")"
grep -q "requeue 4242" "$TMP/scontrol.calls" 2> /dev/null \
  || fail "SIGUSR1 then SIGTERM: no requeue: $(cat "$TMP/job.log")"

out=$(SCALPEL_LAUNCHER=fake SCALPEL_MAX_REQUEUES=abc bash -c "source '$ROOT/slurm/job.sh'; scalpel_job '$TMP/root' prune x" 2>&1)
rc=$?
[ "$rc" = 2 ] || fail "SCALPEL_MAX_REQUEUES=abc: exit $rc, want 2: $out"
echo "$out" | grep -q "SCALPEL_MAX_REQUEUES=abc: expected a count" || fail "SCALPEL_MAX_REQUEUES=abc: $out"
echo "$out" | grep -q "step: started" && fail "SCALPEL_MAX_REQUEUES=abc: the step ran: $out"
# A step killed by the SIGUSR1 forwarded to it (138: it landed before scalpel took the signal, in
# its first moments) lost nothing: a requeue, as for exit 75 (the job ended FAILED).
cat > "$TMP/root/launch/early.sh" <<'STEP'
#!/usr/bin/env bash
echo "step: started $*"
for _ in $(seq 600); do sleep 0.1; done
exit 0
STEP
chmod +x "$TMP/root/launch/early.sh"
# early_job ARGS...: the job with the step above, SIGUSR1 to its shell once the step runs; its exit
# code (RESTART_COUNT: SLURM_RESTART_COUNT, default 0).
early_job() {
  rm -f "$TMP/scontrol.calls"
  PATH="$TMP/bin:$PATH" SCALPEL_LAUNCHER=early SLURM_JOB_ID=4242 SLURM_RESTART_COUNT=${RESTART_COUNT:-0} \
    bash -c "source '$ROOT/slurm/job.sh'; scalpel_job '$TMP/root' $*" > "$TMP/job.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do grep -q "step: started" "$TMP/job.log" 2> /dev/null && break; sleep 0.1; done
  kill -s USR1 "$pid"
  wait "$pid"
}
early_job prune cfg.yaml
rc=$?
[ "$rc" = 75 ] || fail "a step killed by the forwarded SIGUSR1: exit $rc, want 75: $(cat "$TMP/job.log")"
grep -q "requeue 4242" "$TMP/scontrol.calls" 2> /dev/null || fail "138: no requeue: $(cat "$TMP/job.log")"
grep -q "nothing was lost: treated as interrupted" "$TMP/job.log" || fail "138: $(cat "$TMP/job.log")"

# Not for a command without stopping points (eval: a requeue would redo it and be killed again).
early_job eval cfg.yaml
rc=$?
[ "$rc" = 138 ] || fail "an eval step killed by the forwarded SIGUSR1: exit $rc, want 138: $(cat "$TMP/job.log")"
grep -q "requeue" "$TMP/scontrol.calls" 2> /dev/null && fail "eval 138: requeued: $(cat "$TMP/job.log")"

# --restart is for the first run: a requeued run (SLURM_RESTART_COUNT 1) leaves it out, and says
# so (it discarded the committed layers at every requeue, looping until SCALPEL_MAX_REQUEUES).
restart_args() {  # RESTART_COUNT ARGS...: the arguments the step got
  local count=$1
  shift
  RESTART_COUNT=$count early_job prune cfg.yaml "$@" a=1
  grep "step: started" "$TMP/job.log"
}
[ "$(restart_args 0 --restart)" = "step: started prune cfg.yaml --restart a=1" ] || fail "restart 0: $(cat "$TMP/job.log")"
[ "$(restart_args 1 --restart)" = "step: started prune cfg.yaml a=1" ] || fail "restart 1 kept --restart: $(cat "$TMP/job.log")"
grep -q "restart 1: --restart left out" "$TMP/job.log" || fail "restart 1: not said: $(cat "$TMP/job.log")"
# --restart-from L (both spellings) too: it discarded layers L.. at every requeue.
[ "$(restart_args 0 --restart-from 2)" = "step: started prune cfg.yaml --restart-from 2 a=1" ] \
  || fail "restart 0, --restart-from: $(cat "$TMP/job.log")"
[ "$(restart_args 1 --restart-from 2)" = "step: started prune cfg.yaml a=1" ] \
  || fail "restart 1 kept --restart-from 2: $(cat "$TMP/job.log")"
grep -q "restart 1: --restart-from 2 left out" "$TMP/job.log" || fail "restart 1: not said: $(cat "$TMP/job.log")"
[ "$(restart_args 2 --restart-from=2)" = "step: started prune cfg.yaml a=1" ] \
  || fail "restart 2 kept --restart-from=2: $(cat "$TMP/job.log")"

echo "PASS: SIGUSR1 requeues (a SIGTERM after it too, a step it killed in its start-up too), SIGTERM alone stops without a requeue, a bad SCALPEL_MAX_REQUEUES is refused, --restart and --restart-from are left out of a requeued run"
