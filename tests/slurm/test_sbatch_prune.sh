#!/usr/bin/env bash
# sbatch slurm/opt-mini.sbatch over SCALPEL_SLURM_TEST_NTASKS (2) tasks runs to COMPLETED, and its
# export is bitwise equal to a direct one-process `scalpel prune` of the same config.
#   bash test_sbatch_prune.sh SCALPEL_BIN SOURCE_DIR        (exit 77 = skipped: no Slurm)
# shellcheck source=tests/slurm/lib.sh
source "$(dirname "$0")/lib.sh"
need_slurm

# 16 x 128-token calibration windows: the whole prune takes seconds. determinism=strict: the
# rank-count invariance that makes 2 ranks bitwise equal to 1.
OVR=(calibration.nsamples=16 calibration.seqlen=128 determinism=strict 'eval.sets=[]' log.progress_seconds=0)
reference_prune "$TMP/ref" "${OVR[@]}"
submit_opt_mini "${OVR[@]}" "output.dir=$TMP/job"
wait_until 150 "job $JOB did not end" job_ended "$JOB"

state=$(job_field "$JOB" JobState)
code=$(job_field "$JOB" ExitCode)
say "job $JOB: JobState=$state ExitCode=$code Restarts=$(job_field "$JOB" Restarts)"
[ "$state" = COMPLETED ] || fail "job $JOB ended $state (ExitCode=$code), expected COMPLETED"
grep -q "$NTASKS task(s)" "$TMP/job.log" || fail "the job did not run $NTASKS tasks"
grep -q "scalpel prune finished (exit 0)" "$TMP/job.log" || fail "the job log does not say the prune finished"
same_bytes "$TMP/ref/model/model.safetensors" "$TMP/job/model/model.safetensors"
say "PASS: job $JOB ($NTASKS tasks) COMPLETED; model.safetensors bitwise equal to the direct run"
