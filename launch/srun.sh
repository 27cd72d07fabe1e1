#!/usr/bin/env bash
# Runs `scalpel <command> <args...>` over N MPI ranks as a Slurm job step (srun, PMIx), one block
# of cores per rank. Inside an allocation (sbatch, salloc) it takes the allocation's task count;
# outside one, srun asks for an allocation itself.
#
#   launch/srun.sh [-n N] <command> [args...]
#   salloc -N 2 --ntasks-per-node=4 --exclusive launch/srun.sh prune configs/prune-opt-mini.yaml
#
# Binding: each task gets --cpus-per-task=C cores and --cpu-bind=cores, C = SCALPEL_THREADS, else
# the job's --cpus-per-task, else the node's allocated CPUs / tasks per node (the share that
# scalpel's `threads: 0` gives a rank), so ranks never share a core (when the cluster's
# TaskPlugin binds; task/none does not).
#
# Environment (all optional):
#   SCALPEL_BIN        scalpel executable (default: build/bin/scalpel of this repository, else
#                      `scalpel` on PATH)
#   SCALPEL_NP         number of tasks (default: SLURM_NTASKS inside an allocation, else 1);
#                      -n N on the command line wins
#   SCALPEL_THREADS    threads (and cores) per rank. Unset (the default): scalpel chooses, and
#                      nothing is exported. Set: --cpus-per-task, exported as OMP_NUM_THREADS and
#                      OPENBLAS_NUM_THREADS, and passed to eval/prune as threads=N (unless the
#                      arguments set threads=)
#   SCALPEL_BIND       --cpu-bind value (default: cores; none disables binding)
#   SCALPEL_MPI        srun --mpi plugin (default: pmix, which Open MPI needs; `srun --mpi=list`)
#   SCALPEL_SRUN       the srun executable (default: srun)
#   SCALPEL_SRUN_ARGS  extra srun arguments, split at spaces (e.g. "--gpus-per-task=1")
#   SCALPEL_DRY_RUN    1: print the command and exit
# Read from the Slurm allocation, when inside one: SLURM_NTASKS, SLURM_CPUS_PER_TASK,
# SLURM_NTASKS_PER_NODE, SLURM_JOB_NUM_NODES, SLURM_CPUS_ON_NODE. As root,
# OMPI_ALLOW_RUN_AS_ROOT=1 and OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 are exported.
#
# Signals: SIGTERM, SIGUSR1 and a first SIGINT (Ctrl-C) reach every task as SIGUSR1 (scalpel
# finishes the current layer, commits it and exits 75); srun turns a SIGTERM of its own into
# SIGKILL of the tasks. A second SIGINT, SIGUSR2 and SIGHUP are forwarded to srun as they are
# (srun aborts the step on SIGHUP, or on two SIGINTs within a second).
# Exit code: srun's, i.e. the highest of the tasks' (75 = interrupted after a commit: run it again
# to resume).
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

np=${SCALPEL_NP:-${SLURM_NTASKS:-1}}
scalpel_parse_np "$@"
shift "$SCALPEL_NP_SHIFT"
if [ $# -lt 1 ]; then
  echo "usage: $0 [-n N] <scalpel command> [args...]   (see the header of this script)" >&2
  exit 2
fi
scalpel_int_var np "number of tasks"

[ -n "${SCALPEL_THREADS:-}" ] && scalpel_int_var SCALPEL_THREADS SCALPEL_THREADS
[ -z "${SCALPEL_THREADS:-}" ] && [ -n "${SLURM_CPUS_PER_TASK:-}" ] \
  && scalpel_int_var SLURM_CPUS_PER_TASK SLURM_CPUS_PER_TASK
cpt=${SCALPEL_THREADS:-${SLURM_CPUS_PER_TASK:-}}
if [ -z "$cpt" ] && [ -n "${SLURM_CPUS_ON_NODE:-}" ]; then
  nodes=${SLURM_JOB_NUM_NODES:-1}
  scalpel_int_var nodes SLURM_JOB_NUM_NODES
  per_node=${SLURM_NTASKS_PER_NODE:-$(((np + nodes - 1) / nodes))}
  per_node=${per_node%%(*}
  scalpel_int_var per_node SLURM_NTASKS_PER_NODE
  node_cpus=${SLURM_CPUS_ON_NODE%%(*}
  scalpel_int_var node_cpus SLURM_CPUS_ON_NODE
  cpt=$((node_cpus / per_node))
  [ "$cpt" -ge 1 ] || cpt=1
fi

bin=$(scalpel_find_bin)
scalpel_build_command "$bin" "$@"
scalpel_root_env

cmd=("${SCALPEL_SRUN:-srun}" --ntasks="$np" --mpi="${SCALPEL_MPI:-pmix}" --cpu-bind="${SCALPEL_BIND:-cores}")
[ -n "$cpt" ] && cmd+=(--cpus-per-task="$cpt")
# shellcheck disable=SC2206  # split on purpose
[ -n "${SCALPEL_SRUN_ARGS:-}" ] && cmd+=($SCALPEL_SRUN_ARGS)
cmd+=("${SCALPEL_CMD[@]}")

if [ "${SCALPEL_DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
rc=0
scalpel_run_forwarding "${cmd[@]}" || rc=$?
exit "$rc"
