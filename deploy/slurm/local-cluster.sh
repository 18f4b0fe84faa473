#!/bin/bash
# A single-node Slurm cluster on this machine, for tests (root; Debian's slurm-wlm and munge):
#   local-cluster.sh start DIR   writes DIR/slurm.conf and a munge key, starts munged, slurmctld and slurmd in DIR,
#                                waits until `sinfo` shows the node idle; prints the SLURM_CONF to export
#   local-cluster.sh stop DIR    stops the daemons it started (by the pids in DIR)
set -euo pipefail
cmd=${1:?start|stop}; dir=$(realpath -m "${2:?state folder}")
stop() {
  for d in slurmd slurmctld munged; do
    if [ -f "$dir/$d.pid" ]; then pid=$(cat "$dir/$d.pid"); kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done; rm -f "$dir/$d.pid"; fi
  done
}
if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 3; }
for b in munged slurmctld slurmd sbatch sinfo; do command -v $b >/dev/null || { echo "$b is not installed (apt-get install -y slurm-wlm munge)" >&2; exit 3; }; done
mkdir -p "$dir"/{spool,state,munge,log}
host=$(hostname -s); cpus=$(nproc); mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
cat > "$dir/slurm.conf" <<CONF
ClusterName=dejavu-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldPort=16817
SlurmdPort=16818
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=30
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf
[ -f "$dir/munge/munge.key" ] || { dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none; chmod 400 "$dir/munge/munge.key"; }
chmod 700 "$dir/munge"
munged --force -S "$dir/munge/munge.socket" --key-file "$dir/munge/munge.key" --pid-file "$dir/munged.pid" --log-file "$dir/log/munged.log" --seed-file "$dir/munge/seed"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then echo "SLURM_CONF=$SLURM_CONF"; exit 0; fi
  sleep 0.2
done
echo "the node did not come up idle: $(sinfo 2>&1 | tail -2 | tr '\n' ' ') $(tail -3 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" 2>/dev/null | tr '\n' ' ')" >&2
stop; exit 4
