# shellcheck shell=bash
# Shared by launch/mpirun.sh and launch/srun.sh (sourced, not run). The environment variables it
# reads are documented in the headers of those two scripts.

scalpel_log() { echo "scalpel-launch: $*" >&2; }

# The scalpel executable: $SCALPEL_BIN, else <repository>/build/bin/scalpel, else `scalpel` on PATH.
scalpel_find_bin() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ -n "${SCALPEL_BIN:-}" ]; then
    echo "$SCALPEL_BIN"
  elif [ -x "$root/build/bin/scalpel" ]; then
    echo "$root/build/bin/scalpel"
  elif command -v scalpel > /dev/null; then
    command -v scalpel
  else
    scalpel_log "no scalpel executable: set SCALPEL_BIN or build build/bin/scalpel"
    return 2
  fi
}

# The rank count given first on the command line: "-n N", "-np N", "-nN" or "-n=N" sets np and
# SCALPEL_NP_SHIFT to the words it took (0 when none was given); "-n" without its number exits 2.
scalpel_parse_np() {
  SCALPEL_NP_SHIFT=0
  case "${1:-}" in
    -n | -np)
      if [ $# -lt 2 ]; then
        scalpel_log "$1 needs a number of ranks"
        exit 2
      fi
      np=$2
      SCALPEL_NP_SHIFT=2
      ;;
    -n[0-9]* | -n=*)
      np=${1#-n}
      np=${np#=}
      SCALPEL_NP_SHIFT=1
      ;;
  esac
}

# Positive integer check for a value (NAME names it in the message): digits only, not zero, at
# most 9 digits (arithmetic beyond that overflows).
scalpel_need_int() {  # NAME VALUE
  case "$2" in
    '' | *[!0-9]*) scalpel_log "$1 must be a positive integer (got '$2')"; exit 2 ;;
  esac
  local digits=$2
  while [ "${#digits}" -gt 1 ] && [ "${digits:0:1}" = 0 ]; do digits=${digits:1}; done  # 0008 is 8
  if [ "${#digits}" -gt 9 ] || [ "$digits" = 0 ]; then
    scalpel_log "$1 must be a positive integer below 10^9 (got '$2')"
    exit 2
  fi
}

# Checks the variable named VAR with scalpel_need_int and rewrites it in plain decimal: bash
# arithmetic reads "08" as a bad octal number and "010" as 8, where mpirun and srun read 10.
scalpel_int_var() {  # VAR LABEL
  scalpel_need_int "$2" "${!1}"
  printf -v "$1" '%d' "$((10#${!1}))"
}

# The scalpel command word of ARGS (the first word not an option; --log-level takes a value).
scalpel_command_word() {  # ARGS...
  while [ $# -gt 0 ]; do
    case "$1" in
      --log-level) shift 2 || return 0 ;;
      -*) shift ;;
      *) echo "$1"; return 0 ;;
    esac
  done
}

# SCALPEL_THREADS, when set: OMP_NUM_THREADS and OPENBLAS_NUM_THREADS for every rank, and
# `threads=N` for the commands that take config overrides (eval, prune) unless the arguments
# already set threads. Sets the array SCALPEL_CMD to "scalpel <command> <args...>".
scalpel_build_command() {  # BIN COMMAND ARGS...
  local bin=$1
  shift
  SCALPEL_CMD=("$bin" "$@")
  # scalpel restarts itself to set PASSIVE when it is unset (see src/app/run_control.hpp), and a
  # stop signal during that restart kills the rank: set it for the ranks instead.
  export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
  [ -n "${SCALPEL_THREADS:-}" ] || return 0
  scalpel_int_var SCALPEL_THREADS SCALPEL_THREADS
  export OMP_NUM_THREADS=$SCALPEL_THREADS OPENBLAS_NUM_THREADS=$SCALPEL_THREADS
  case "$(scalpel_command_word "$@")" in
    eval | prune)
      local a
      for a in "$@"; do
        case "$a" in threads=*) return 0 ;; esac
      done
      SCALPEL_CMD+=("threads=$SCALPEL_THREADS")
      ;;
  esac
}

# Open MPI refuses to start as root unless told to.
scalpel_root_env() {
  if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fi
}

# Runs "$@" in the background and waits for it, forwarding signals; returns its exit code.
# SIGTERM and SIGUSR1 reach the ranks as SIGUSR1 (scalpel: finish the current layer, commit, exit
# 75): mpirun and srun both turn a SIGTERM of their own into killing the ranks. A first SIGINT
# (Ctrl-C) does the same, as Ctrl-C does to scalpel itself; a second one is forwarded as SIGINT
# (the launcher aborts the run). SIGUSR2 and SIGHUP are forwarded as they are (SIGHUP aborts).
# The launcher runs in a process group of its own (job control on for the moment it starts), so a
# Ctrl-C at the terminal reaches the wrapper alone, which decides what the ranks get (mpirun
# would abort the job on a SIGINT of its own); its stdin is /dev/null, which a background group
# may read without being stopped.
scalpel_run_forwarding() {
  set -m
  "$@" < /dev/null &
  _scalpel_child=$!
  set +m
  _scalpel_trapped=0
  trap '_scalpel_forward USR1 TERM' TERM
  trap '_scalpel_forward USR1 USR1' USR1
  trap '_scalpel_forward USR2 USR2' USR2
  _scalpel_interrupts=0
  trap '_scalpel_interrupt' INT
  trap '_scalpel_forward HUP HUP' HUP
  local rc=0 again
  while :; do
    wait "$_scalpel_child"
    rc=$?
    kill -0 "$_scalpel_child" 2> /dev/null || break  # exited (a trap interrupts `wait` with rc > 128)
  done
  if [ "$_scalpel_trapped" = 1 ] && [ "$rc" -gt 128 ]; then
    # The last `wait` may have been the one a trap interrupted: ask again for the real status.
    wait "$_scalpel_child" 2> /dev/null
    again=$?
    [ "$again" -ne 127 ] && rc=$again
  fi
  trap - TERM USR1 USR2 INT HUP
  return "$rc"
}

_scalpel_interrupt() {
  _scalpel_interrupts=$((_scalpel_interrupts + 1))
  if [ "$_scalpel_interrupts" = 1 ]; then
    _scalpel_forward USR1 INT
    scalpel_log "the ranks stop after the current step (exit 75, rerun to resume); Ctrl-C again passes it to the launcher"
  else
    _scalpel_forward INT INT
  fi
}

_scalpel_forward() {  # SIGNAL-TO-SEND SIGNAL-RECEIVED
  _scalpel_trapped=1
  scalpel_log "got SIG$2: forwarding SIG$1 to the launcher (pid $_scalpel_child)"
  kill -s "$1" "$_scalpel_child" 2> /dev/null || true
}
