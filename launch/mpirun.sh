#!/usr/bin/env bash
# Runs `scalpel <command> <args...>` over N MPI ranks with Open MPI's mpirun, one block of cores
# per rank.
#
#   launch/mpirun.sh [-n N] <command> [args...]
#   launch/mpirun.sh -n 4 eval configs/default.yaml
#   SCALPEL_MPIRUN_ARGS="--hostfile hosts" SCALPEL_PPN=8 launch/mpirun.sh -n 64 prune cfg.yaml
#
# Mapping and binding: each node gets SCALPEL_PPN ranks and each rank is bound to its own
# PE = cores / SCALPEL_PPN cores (`--map-by ppr:PPN:node:PE=PE --bind-to core`), the share that
# scalpel's `threads: 0` gives a rank (the node's cores / ranks on the node), so ranks never
# share a core. With more ranks than cores it oversubscribes and does not bind.
#
# Environment (all optional):
#   SCALPEL_BIN             scalpel executable (default: build/bin/scalpel of this repository,
#                           else `scalpel` on PATH)
#   SCALPEL_NP              number of ranks (default: SLURM_NTASKS inside a Slurm allocation,
#                           else 1); -n N on the command line wins
#   SCALPEL_PPN             ranks per node (default: ceil(N / nodes), nodes = SLURM_JOB_NUM_NODES
#                           inside an allocation, else 1)
#   SCALPEL_CORES_PER_NODE  cores of a node (default: SLURM_CPUS_ON_NODE inside an allocation,
#                           else nproc of this machine)
#   SCALPEL_THREADS         threads per rank. Unset (the default): scalpel chooses, and nothing is
#                           exported. Set: exported (mpirun -x) as OMP_NUM_THREADS and
#                           OPENBLAS_NUM_THREADS, passed to eval/prune as threads=N (unless the
#                           arguments set threads=), and used as the binding width PE
#   SCALPEL_BIND            core (default): bind each rank to its PE cores; none: no binding
#   SCALPEL_MPIRUN          the mpirun executable (default: mpirun)
#   SCALPEL_MPIRUN_ARGS     extra mpirun arguments, split at spaces (e.g. "--hostfile hosts")
#   SCALPEL_DRY_RUN         1: print the command and exit
# Read from a Slurm allocation, when inside one: SLURM_NTASKS, SLURM_JOB_NUM_NODES,
# SLURM_CPUS_ON_NODE. As root, OMPI_ALLOW_RUN_AS_ROOT=1 and OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 are
# exported (Open MPI refuses root otherwise).
#
# Signals: SIGTERM, SIGUSR1 and a first SIGINT (Ctrl-C) reach every rank as SIGUSR1 (scalpel
# finishes the current layer, commits it and exits 75); mpirun's own SIGTERM handling would kill
# the ranks at once. A second SIGINT, SIGUSR2 and SIGHUP are forwarded to mpirun as they are
# (SIGINT/SIGHUP: mpirun ends the job, sending the ranks SIGTERM, on which scalpel too stops after
# the current layer; mpirun then exits 1).
# Exit code: mpirun's, i.e. the ranks' (75 = interrupted after a commit: run it again to resume).
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
scalpel_int_var np "number of ranks"

nodes=${SLURM_JOB_NUM_NODES:-1}
scalpel_int_var nodes SLURM_JOB_NUM_NODES
ppn=${SCALPEL_PPN:-$(((np + nodes - 1) / nodes))}
scalpel_int_var ppn SCALPEL_PPN
[ "$ppn" -gt "$np" ] && ppn=$np
cores=${SCALPEL_CORES_PER_NODE:-${SLURM_CPUS_ON_NODE:-$(nproc)}}
cores=${cores%%(*}  # SLURM_CPUS_ON_NODE can read "16(x2)" on heterogeneous allocations
scalpel_int_var cores SCALPEL_CORES_PER_NODE
[ -n "${SCALPEL_THREADS:-}" ] && scalpel_int_var SCALPEL_THREADS SCALPEL_THREADS
pe=${SCALPEL_THREADS:-$((cores / ppn))}

bin=$(scalpel_find_bin)
scalpel_build_command "$bin" "$@"
scalpel_root_env

case "${SCALPEL_BIND:-core}" in
  core | cores | none) ;;
  *)
    scalpel_log "SCALPEL_BIND=$SCALPEL_BIND: expected core (the default; cores is the same) or none"
    exit 2
    ;;
esac
cmd=("${SCALPEL_MPIRUN:-mpirun}" -n "$np")
if [ "${SCALPEL_BIND:-core}" = none ]; then
  cmd+=(--map-by "ppr:$ppn:node" --bind-to none)
  [ "$ppn" -gt "$cores" ] && cmd+=(--oversubscribe)  # mpirun refuses more ranks than slots otherwise
elif [ "$pe" -ge 1 ] && [ $((pe * ppn)) -le "$cores" ]; then
  cmd+=(--map-by "ppr:$ppn:node:PE=$pe" --bind-to core)
else
  if [ "$pe" -ge 1 ]; then
    scalpel_log "$ppn ranks x $pe threads on $cores cores: oversubscribing, ranks not bound"
  else
    scalpel_log "$ppn ranks on $cores cores: oversubscribing (one thread each), ranks not bound"
  fi
  cmd+=(--map-by "ppr:$ppn:node" --oversubscribe --bind-to none)
fi
for v in OMP_NUM_THREADS OPENBLAS_NUM_THREADS OMP_WAIT_POLICY; do
  [ -n "${!v:-}" ] && cmd+=(-x "$v")
done
# shellcheck disable=SC2206  # split on purpose
[ -n "${SCALPEL_MPIRUN_ARGS:-}" ] && cmd+=($SCALPEL_MPIRUN_ARGS)
cmd+=("${SCALPEL_CMD[@]}")

if [ "${SCALPEL_DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
rc=0
scalpel_run_forwarding "${cmd[@]}" || rc=$?
exit "$rc"
