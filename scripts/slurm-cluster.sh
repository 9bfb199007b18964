#!/usr/bin/env bash
# Starts a one-node Slurm cluster on this machine, for the simulator's Slurm test
# (netsim/tests/slurm.rs): writes /etc/slurm/slurm.conf if it is missing, creates the
# munge key if it is missing, starts munged, slurmctld and slurmd directly (no systemd)
# unless they run already, and waits until the node is idle. Idempotent. Run as root
# (scripts/setup.sh does).
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "slurm-cluster: run as root; it writes /etc/slurm and starts daemons" >&2
    exit 1
fi
for cmd in munged slurmctld slurmd sinfo scontrol; do
    command -v "$cmd" >/dev/null 2>&1 || {
        echo "slurm-cluster: $cmd is missing; install slurm-wlm and munge" >&2
        exit 1
    }
done
# Without pgrep every run would start the daemons again (and fail on the ones running).
for cmd in pgrep runuser hostname; do
    command -v "$cmd" >/dev/null 2>&1 || {
        echo "slurm-cluster: $cmd is missing; install procps, util-linux and hostname" >&2
        exit 1
    }
done

host="$(hostname -s)"
conf=/etc/slurm/slurm.conf
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
chown slurm:slurm /var/spool/slurmctld /var/log/slurm 2>/dev/null || true

if [ ! -f "$conf" ]; then
    echo "slurm-cluster: writing $conf for node $host"
    # CPUs, boards, sockets, cores, threads and memory as slurmd sees them.
    # The node and the controller on the loopback address, so that nothing depends on
    # the host name resolving.
    node="$(slurmd -C | head -n 1 | sed -e "s/^NodeName=[^ ]*/NodeName=$host NodeAddr=127.0.0.1/")"
    cat >"$conf" <<CONF
# A one-node cluster for tests (written by scripts/slurm-cluster.sh).
ClusterName=hearth
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
fi

if [ ! -s /etc/munge/munge.key ]; then
    echo "slurm-cluster: creating the munge key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
chown munge:munge /run/munge
if ! pgrep -x munged >/dev/null; then
    echo "slurm-cluster: starting munged"
    runuser -u munge -- munged
fi
if ! pgrep -x slurmctld >/dev/null; then
    echo "slurm-cluster: starting slurmctld"
    slurmctld
fi
if ! pgrep -x slurmd >/dev/null; then
    echo "slurm-cluster: starting slurmd"
    slurmd
fi

# Wait, with a deadline, for the controller to answer and the node to be idle.
deadline=$((SECONDS + 60))
until state="$(sinfo -h -N -n "$host" -o %T 2>/dev/null)" && [[ "$state" == idle* || "$state" == mixed* || "$state" == allocated* ]]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "slurm-cluster: the node $host is not idle after 60 s (state: ${state:-no answer}); see /var/log/slurm/" >&2
        exit 1
    fi
    # A node that came back from a restart may be down until it is resumed.
    if [[ "${state:-}" == down* || "${state:-}" == drain* ]]; then
        scontrol update NodeName="$host" State=RESUME 2>/dev/null || true
    fi
    sleep 1
done
echo "slurm-cluster: node $host is $state"
