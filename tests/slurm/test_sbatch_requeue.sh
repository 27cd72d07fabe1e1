#!/usr/bin/env bash
# Preemption and requeue: the opt-mini job gets SIGUSR1 on its batch shell (as from
# `#SBATCH --signal=B:USR1@...`) once a layer is committed; scalpel finishes the current layer,
# commits it and exits 75; the batch script requeues the job; the restart resumes after the last
# committed layer and completes; the export is bitwise equal to an uninterrupted direct run.
#   bash test_sbatch_requeue.sh SCALPEL_BIN SOURCE_DIR      (exit 77 = skipped: no Slurm)
# shellcheck source=tests/slurm/lib.sh
source "$(dirname "$0")/lib.sh"
need_slurm

# 64 x 128-token windows: a layer takes about a second, time enough to land the signal mid-run.
OVR=(calibration.nsamples=64 calibration.seqlen=128 determinism=strict 'eval.sets=[]' log.progress_seconds=0)
reference_prune "$TMP/ref" "${OVR[@]}"
layers=$(grep -o '"status": *"committed"' "$TMP/ref/ckpt/manifest.json" | wc -l)
submit_opt_mini "${OVR[@]}" "output.dir=$TMP/job"

# Signal the batch shell once the first layer is committed (and before the last one is).
first_commit() { [ "$(committed_layers "$TMP/job/ckpt")" -ge 1 ] || job_ended "$JOB"; }
wait_until 120 "job $JOB committed no layer" first_commit
done_at_signal=$(committed_layers "$TMP/job/ckpt")
job_ended "$JOB" && fail "job $JOB ended ($(job_field "$JOB" JobState)) before it could be signalled"
[ "$done_at_signal" -lt "$layers" ] || fail "all $layers layers were committed before the signal: nothing to interrupt"
scancel --signal=USR1 --batch "$JOB" || fail "scancel --signal=USR1 --batch $JOB failed"
say "SIGUSR1 sent to the batch shell of job $JOB with $done_at_signal of $layers layers committed"

# The interrupted run must exit 75 and requeue the job; the restart must finish it.
exited75() { grep -q "exit 75" "$TMP/job.log" 2> /dev/null || job_ended "$JOB"; }
wait_until 90 "job $JOB did not report exit 75 after SIGUSR1" exited75
restarted() { [ "$(job_field "$JOB" Restarts)" -ge 1 ] 2> /dev/null || job_ended "$JOB"; }
wait_until 30 "job $JOB was not requeued" restarted
say "job $JOB: Restarts=$(job_field "$JOB" Restarts) JobState=$(job_field "$JOB" JobState)"
wait_until 150 "job $JOB did not end after the requeue" job_ended "$JOB"

state=$(job_field "$JOB" JobState)
code=$(job_field "$JOB" ExitCode)
restarts=$(job_field "$JOB" Restarts)
say "job $JOB: JobState=$state ExitCode=$code Restarts=$restarts"
if ! grep -q "interrupted (exit 75: what was done is kept): requeueing job $JOB" "$TMP/job.log"; then
  got=$(grep -o "scalpel prune [a-z]* (exit [0-9]*)" "$TMP/job.log" | head -1)
  case "$got" in
    *"(exit 138)") fail "after SIGUSR1 the ranks died of the signal (exit 138 = 128 + SIGUSR1) instead of committing the layer and exiting 75: this scalpel does not handle SIGUSR1" ;;
    *) fail "after SIGUSR1 scalpel did not exit 75 (the job log says: ${got:-nothing}), or the batch script did not requeue" ;;
  esac
fi
[ "$restarts" = 1 ] || fail "job $JOB: Restarts=$restarts, expected 1"
[ "$state" = COMPLETED ] || fail "job $JOB ended $state (ExitCode=$code) after the requeue, expected COMPLETED"
grep -q "job $JOB (restart 1)" "$TMP/job.log" || fail "the job log shows no restart"
# Slurm's own record of the interrupted run, where job completions go to a file (slurm_setup.sh's
# cluster): the step's exit code 75.
config=$(scontrol show config 2> /dev/null)
comp=$(sed -n 's/^JobCompLoc *= *//p' <<< "$config")
if grep -q "^JobCompType *= *jobcomp/filetxt" <<< "$config" && [ -r "$comp" ]; then
  grep "^JobId=$JOB " "$comp" | grep "DerivedExitCode=75:0" > /dev/null \
    || fail "$comp has no record of job $JOB with DerivedExitCode=75:0"
  say "$comp: job $JOB has a run with DerivedExitCode=75:0"
fi
resumed=$(grep -o "resuming at layer [0-9]*" "$TMP/job.log" | head -1)
[ -n "$resumed" ] || fail "the restarted run did not resume from the checkpoint (no 'resuming' in the log)"
at=${resumed##* }
{ [ "$at" -ge 1 ] && [ "$at" -le "$layers" ]; } || fail "'$resumed': expected a layer in 1..$layers"
grep -q "scalpel prune finished (exit 0)" "$TMP/job.log" || fail "the restarted run did not finish"
same_bytes "$TMP/ref/model/model.safetensors" "$TMP/job/model/model.safetensors"
say "PASS: job $JOB interrupted with $done_at_signal layers committed, exited 75, requeued, $resumed," \
  "COMPLETED; model.safetensors bitwise equal to the uninterrupted run"
