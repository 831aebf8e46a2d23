#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine for the tests: munged, slurmctld and slurmd on
# localhost, run as root, one node "localhost" with 2 CPUs and no GPUs, one partition "debug".
# Idempotent: exits 0 at once when the node already answers. Exits non-zero with one sentence
# when it cannot start (Slurm not installed, not root, a daemon that does not come up).
# Needs Debian's slurm-wlm and munge (apt-get install -y slurm-wlm munge).
set -euo pipefail

conf_dir=/etc/slurm
conf="$conf_dir/slurm.conf"
marker="# written by hpsearch tests/slurm/start.sh"
log_dir=/var/log/slurm
spool=/var/spool/slurm

fail() { echo "tests/slurm/start.sh: $*" >&2; exit 1; }

node_ready() {
    # The node is up when sinfo names it idle, mixed or allocated (not down, drained or unknown).
    sinfo -h -N -n localhost -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'
}

for program in munged slurmctld slurmd sinfo sbatch; do
    command -v "$program" >/dev/null || fail "$program is not installed; run: apt-get install -y slurm-wlm munge"
done
[ "$(id -u)" = 0 ] || fail "the test cluster's daemons run as root; run this as root."

if [ -f "$conf" ] && ! grep -qF "$marker" "$conf"; then
    fail "$conf exists and is not the test cluster's; move it away to let the tests start their own Slurm."
fi
if [ -f "$conf" ] && node_ready; then
    exit 0
fi

# ---- munge: the authentication every Slurm daemon and client uses
mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged || fail "munged did not start (see /var/log/munge/munged.log)."
    for _ in $(seq 1 20); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n </dev/null | unmunge >/dev/null || fail "munge does not authenticate (see /var/log/munge/munged.log)."
fi

# ---- slurm.conf: no cgroups (a container may not delegate them), processes tracked by their parent tree
memory_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 / 2)}' /proc/meminfo)
mkdir -p "$conf_dir" "$log_dir" "$spool/ctld" "$spool/d"
cat >"$conf.new" <<CONF
$marker
ClusterName=hpsearch-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
JobRequeue=1
ReturnToService=2
# Cancelled or preempted tasks get SIGTERM, then SIGKILL this many seconds later: time for a worker
# to record its trial as interrupted and re-queue it.
KillWait=20
# Finished jobs stay visible to squeue this long (there is no accounting database for sacct).
MinJobAge=600
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
StateSaveLocation=$spool/ctld
SlurmdSpoolDir=$spool/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$log_dir/slurmctld.log
SlurmdLogFile=$log_dir/slurmd.log
SlurmctldParameters=enable_configless
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
mv "$conf.new" "$conf"
printf '%s\nConstrainCores=no\n' "$marker" >"$conf_dir/cgroup.conf"

pid_running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if ! pid_running /run/slurmctld.pid; then
    slurmctld -i || fail "slurmctld did not start (see $log_dir/slurmctld.log)."
fi
for _ in $(seq 1 30); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 1; done
scontrol ping | grep -q UP || fail "slurmctld does not answer (see $log_dir/slurmctld.log)."

if ! pid_running /run/slurmd.pid; then
    slurmd -N localhost || fail "slurmd did not start (see $log_dir/slurmd.log)."
fi
for _ in $(seq 1 60); do
    node_ready && break
    # A node left down or drained by an earlier run comes back.
    scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
    sleep 1
done
node_ready || fail "node localhost is not idle: $(sinfo -h -N -o '%T %E' 2>&1 | head -1) (see $log_dir/slurmd.log)."
echo "slurm: node localhost $(sinfo -h -N -n localhost -o '%T'), partition debug"
