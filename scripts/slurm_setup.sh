#!/usr/bin/env bash
# Installs and starts a one-node Slurm on this machine, for the `slurm` tests and for trying the
# batch scripts in slurm/ (Debian: slurm-wlm and munge). Idempotent: run it again and it only
# starts what is not running, restarts the daemons if the configuration it writes changed, and
# brings the node back from DOWN or DRAIN. No systemd needed: the daemons are started directly.
#
#   node      this host (`hostname -s`, address 127.0.0.1), CPUs = nproc, RealMemory = 80% of RAM
#   partition debug (Default, MaxTime UNLIMITED)
#   plugins   SlurmUser=root, proctrack/linuxproc, select/cons_tres with CR_Core, task/affinity
#             (no cgroups needed; task/none where CPU affinity cannot be set), JobRequeue=1,
#             cred_expire=10 (a requeued job may start again 10 s later; Slurm's default is 120)
#   records   no accounting database: `scontrol show job` keeps finished jobs for an hour
#             (MinJobAge); every finished or requeued run is a line of jobcomp.log (filetxt)
#
# Environment (all optional):
#   SCALPEL_SLURM_LOG_DIR      daemon logs and the job-completion log (default /var/log/slurm)
#   SCALPEL_SLURM_TASK_PLUGIN  TaskPlugin (default: task/affinity, which binds tasks to cores
#                              without cgroups, where sched_setaffinity works; else task/none)
#   SCALPEL_SLURM_WAIT         seconds to wait for the node to become idle (default 60)
#
# Exit codes: 0 the node is up (idle, or running jobs); 1 the set-up failed (the message says why);
# 77 cannot be done here (not root, or no apt-get to install the packages).
set -euo pipefail

CONF_DIR=/etc/slurm
LOG_DIR=${SCALPEL_SLURM_LOG_DIR:-/var/log/slurm}
TASK_PLUGIN=${SCALPEL_SLURM_TASK_PLUGIN:-}
WAIT=${SCALPEL_SLURM_WAIT:-60}
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd

say() { echo "slurm_setup: $*"; }
die() { echo "slurm_setup: error: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  say "SKIP: needs root (installs packages, writes $CONF_DIR, starts daemons)"
  exit 77
fi

# 1. Packages.
missing=()
for p in slurm-wlm munge; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" > /dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get > /dev/null; then
    say "SKIP: ${missing[*]} not installed and no apt-get"
    exit 77
  fi
  say "installing ${missing[*]}"
  apt-get update -qq || die "apt-get update failed"
  # policy-rc.d may forbid the packages' own service starts; we start the daemons below.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null \
    || die "apt-get install ${missing[*]} failed"
fi

# 2. munge: a key, then munged as the munge user.
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  say "creating /etc/munge/munge.key"
  if command -v mungekey > /dev/null; then
    mungekey --create --keyfile=/etc/munge/munge.key --force
  else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n 2> /dev/null | unmunge > /dev/null 2>&1; then
  say "starting munged"
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
  for _ in $(seq 50); do munge -n 2> /dev/null | unmunge > /dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge > /dev/null || die "munge does not work (see /var/log/munge/munged.log)"
fi

# 3. slurm.conf for this host.
if [ -z "$TASK_PLUGIN" ]; then
  # task/affinity needs only sched_setaffinity: try to pin a process to the first CPU we may use.
  TASK_PLUGIN=task/none
  first_cpu=$(taskset -cp $$ 2> /dev/null | sed 's/.*: *//; s/[-,].*//')
  if compgen -G "/usr/lib/*/slurm-wlm/task_affinity.so" > /dev/null && [ -n "$first_cpu" ] \
    && taskset -c "$first_cpu" true 2> /dev/null; then
    TASK_PLUGIN=task/affinity
  fi
fi
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
install -d -m 0755 "$CONF_DIR" "$LOG_DIR" "$STATE_DIR" "$SPOOL_DIR"
CONF=$(cat << EOF
# Written by scalpel's scripts/slurm_setup.sh: a one-node cluster for tests.
ClusterName=scalpel
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Step credentials live 10 s (default 120): a requeued job waits that long before it may restart.
AuthInfo=cred_expire=10
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=$TASK_PLUGIN
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Look at pending jobs every 2 s (default 60 and 30): a requeued job restarts soon after cred_expire.
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
MailProg=/bin/true
JobRequeue=1
ReturnToService=2
MinJobAge=3600
KillWait=30
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=UNLIMITED State=UP
EOF
)
changed=0
if [ ! -f "$CONF_DIR/slurm.conf" ] || [ "$(cat "$CONF_DIR/slurm.conf")" != "$CONF" ]; then
  say "writing $CONF_DIR/slurm.conf ($HOST: $CPUS CPUs, ${MEM_MB} MB)"
  printf '%s\n' "$CONF" > "$CONF_DIR/slurm.conf.tmp"
  mv "$CONF_DIR/slurm.conf.tmp" "$CONF_DIR/slurm.conf"
  changed=1
fi
export SLURM_CONF=$CONF_DIR/slurm.conf

# 4. Daemons: (re)start what is not running, or everything if the configuration changed.
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2> /dev/null; }
stop() {  # pidfile name
  if alive "$1"; then
    local pid
    pid=$(cat "$1")
    say "stopping $2 (pid $pid)"
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2> /dev/null && kill -9 "$pid"
  fi
  rm -f "$1"
}
if [ "$changed" = 1 ]; then
  stop /run/slurmd.pid slurmd
  stop /run/slurmctld.pid slurmctld
fi
if ! alive /run/slurmctld.pid; then
  say "starting slurmctld"
  /usr/sbin/slurmctld -f "$SLURM_CONF" || die "slurmctld did not start (see $LOG_DIR/slurmctld.log)"
fi
for _ in $(seq 100); do scontrol ping 2> /dev/null | grep "is UP" > /dev/null && break; sleep 0.2; done
scontrol ping | grep "is UP" > /dev/null || die "slurmctld does not answer (see $LOG_DIR/slurmctld.log)"
if ! alive /run/slurmd.pid; then
  say "starting slurmd"
  /usr/sbin/slurmd -f "$SLURM_CONF" || die "slurmd did not start (see $LOG_DIR/slurmd.log)"
fi

# 5. Wait for the node; resume it from DOWN or DRAIN (a previous run stopped uncleanly).
state=""
for i in $(seq $((WAIT * 2))); do
  state=$(sinfo -h -n "$HOST" -o %T 2> /dev/null | head -1)  # a trailing * means not responding
  case "$state" in
    idle | mixed | allocated | completing) break ;;
    down* | drain* | fail* | inval*)
      if [ $((i % 4)) = 1 ]; then
        say "node $HOST is $state ($(sinfo -h -n "$HOST" -o %E)): resuming it"
        scontrol update nodename="$HOST" state=resume 2> /dev/null || true
      fi ;;
  esac
  sleep 0.5
done
case "$state" in
  idle | mixed | allocated | completing) say "node $HOST is $state; partition debug is up" ;;
  *) die "node $HOST is '${state:-unknown}' after ${WAIT}s (see $LOG_DIR/slurmd.log and $LOG_DIR/slurmctld.log)" ;;
esac
