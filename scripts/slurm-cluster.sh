#!/usr/bin/env bash
# A single-node Slurm cluster (munged, slurmctld, slurmd on localhost) in a
# folder of its own, for tests/slurm.rs and for trying deploy/slurm.sbatch.
#
#   scripts/slurm-cluster.sh install       Debian's slurm-wlm and munge (needs root and apt)
#   scripts/slurm-cluster.sh start DIR     writes DIR/slurm.conf, starts the daemons, waits
#                                          until the node is idle; prints SLURM_CONF=DIR/slurm.conf
#   scripts/slurm-cluster.sh stop DIR      stops every daemon started in DIR
#
# Clients (sbatch, squeue) find the cluster through SLURM_CONF=DIR/slurm.conf.
# Seen working with Debian 12's Slurm 22.05, as root.
set -euo pipefail

die() { echo "slurm-cluster: $*" >&2; exit 1; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "installing slurm-wlm and munge needs root (apt-get); install them, or run as root"
    command -v apt-get >/dev/null || die "no apt-get: install Slurm (slurmctld, slurmd, sbatch) and munge by hand"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

start() {
    local dir; dir=$(realpath -m "$1")
    mkdir -p "$dir"/{state,spool,munge}
    chmod 700 "$dir/munge"
    local host; host=$(hostname -s)
    local cpus; cpus=$(nproc)
    local mem; mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
    # munge: its own key, socket and files.
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
        --seed-file="$dir/munge/munged.seed" || die "munged did not start (see $dir/munge/munged.log)"
    cat > "$dir/slurm.conf" <<CONF
ClusterName=stook-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=26817
SlurmdPort=26818
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
    printf 'CgroupPlugin=autodetect\nIgnoreSystemd=yes\n' > "$dir/cgroup.conf"
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -i || die "slurmctld did not start (see $dir/slurmctld.log)"
    slurmd || die "slurmd did not start (see $dir/slurmd.log)"
    for _ in $(seq 1 60); do
        if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed)'; then
            echo "SLURM_CONF=$dir/slurm.conf"
            return 0
        fi
        sleep 0.5
    done
    sinfo >&2 || true
    tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
    die "the node did not become idle within 30 s"
}

stop() {
    local dir; dir=$(realpath -m "$1")
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        if [ -f "$pidfile" ]; then
            local pid; pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
}

case "${1:-}" in
    install) install ;;
    start) [ $# = 2 ] || die "usage: $0 start DIR"; start "$2" ;;
    stop) [ $# = 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
