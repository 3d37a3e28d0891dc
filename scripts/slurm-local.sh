#!/usr/bin/env bash
# Starts (or stops) a single-node Slurm on this machine for tests: munged,
# slurmctld and slurmd on localhost, as root, with their config and state under DIR.
# Debian's slurm-wlm and munge must be installed (scripts/setup.sh --slurm does it).
#   usage: scripts/slurm-local.sh start DIR    prints `export SLURM_CONF=DIR/slurm.conf`
#          scripts/slurm-local.sh stop DIR
set -euo pipefail
action=${1:?usage: slurm-local.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: slurm-local.sh start|stop DIR}")
conf="$dir/slurm.conf"

stop() {
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    [[ -f $pidfile ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  sleep 1
}

if [[ $action == stop ]]; then stop; exit 0; fi
[[ $action == start ]] || { echo "slurm-local: unknown action $action" >&2; exit 2; }

if pgrep -x slurmctld >/dev/null && ! { [[ -f $dir/slurmctld.pid ]] && pgrep -F "$dir/slurmctld.pid" >/dev/null; }; then
  echo "slurm-local: a slurmctld not started from $dir is running; stop it first" >&2
  exit 2
fi
for b in munged slurmctld slurmd sbatch; do
  command -v "$b" >/dev/null || { echo "slurm-local: $b not found (scripts/setup.sh --slurm)" >&2; exit 2; }
done
mkdir -p "$dir"/{state,spool,log}
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

# munged: the default socket, which Slurm's auth/munge plugin uses.
if ! pgrep -x munged >/dev/null; then
  install -d -o munge -g munge -m 0755 /run/munge
  [[ -s /etc/munge/munge.key ]] || { mungekey --create 2>/dev/null || create-munge-key; }
  chown munge:munge /etc/munge/munge.key
  runuser -u munge -- munged
fi

# Processes are tracked by /proc and nothing is constrained: containers often lack a
# writable cgroup tree, and one test node needs none. Slurm 22.05 still loads a cgroup
# plugin, so name the hierarchy the machine mounts.
cat > "$conf" <<CONF
ClusterName=histomap-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
MpiDefault=none
KillWait=5
InactiveLimit=0
MinJobAge=300
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
cgroup=cgroup/v1
[[ -f /sys/fs/cgroup/cgroup.controllers ]] && cgroup=cgroup/v2
printf 'CgroupPlugin=%s\nCgroupAutomount=no\nConstrainCores=no\nConstrainRAMSpace=no\n' \
  "$cgroup" > "$dir/cgroup.conf"

stop
export SLURM_CONF=$conf
slurmctld -f "$conf"
slurmd -f "$conf"
for _ in $(seq 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
    echo "export SLURM_CONF=$conf"
    exit 0
  fi
  sleep 1
done
echo "slurm-local: the node did not come up; logs in $dir/log" >&2
sinfo >&2 || true
tail -20 "$dir"/log/*.log >&2 || true
exit 1
