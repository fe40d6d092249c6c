#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (as root), for the slurm-marked tests and CI: installs slurm-wlm and munge
# if missing, writes a minimal slurm.conf with this host's real CPUs and memory (reconfiguring running daemons when it
# changed), starts munged, slurmctld and slurmd, and waits until the node is idle. Idempotent. `--stop` stops the
# daemons it started, by their pid files.
set -euo pipefail
state=/var/run/qwen-audio-slurm
conf=/etc/slurm/slurm.conf
daemons=(slurmd slurmctld munged)

if [[ ${1:-} == --stop ]]; then
  for name in "${daemons[@]}"; do
    if [[ -f $state/$name.pid ]] && kill "$(cat "$state/$name.pid")" 2>/dev/null; then echo "stopped $name"; fi
    rm -f "$state/$name.pid"
  done
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge
fi
mkdir -p "$state" /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
host=$(hostname -s)
cpus=$(nproc --all)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > "$conf.new" <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
# A requeued job may start again one credential lifetime after it ended (default 120 s), at the next scheduling
# pass (default every 60 s): both short, so a requeue in the tests takes seconds, not minutes.
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2,bf_interval=1
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
KillWait=10
MinJobAge=3600
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
changed=$(cmp -s "$conf.new" "$conf" && echo no || echo yes)
mv "$conf.new" "$conf"

[[ -s /etc/munge/munge.key ]] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1k count=1 2>/dev/null; }
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
running() { [[ -f $state/$1.pid ]] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }
running munged || { runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid;
  sleep 1; cp /run/munge/munged.pid "$state/munged.pid"; }
if running slurmctld; then [[ $changed == no ]] || scontrol reconfigure; else slurmctld; fi
running slurmd || slurmd
for _ in $(seq 60); do
  if sinfo -h -N -o %t 2>/dev/null | grep -q '^idle'; then sinfo; exit 0; fi
  scontrol update nodename="$host" state=resume 2>/dev/null || true
  sleep 1
done
echo "local_cluster.sh: node $host did not become idle; see /var/log/slurm/" >&2
exit 1
