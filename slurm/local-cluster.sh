#!/usr/bin/env bash
# A real Slurm cluster on this machine, for development, tests and trying a sweep on a workstation.
#
#   slurm/local-cluster.sh start [--nodes N]   install (Debian/Ubuntu packages, needs root), configure, start
#                                              munged + slurmctld + N slurmd (simulated nodes n1..nN), wait idle
#   slurm/local-cluster.sh stop                stop exactly what `start` started, undo its /etc/hosts lines
#   slurm/local-cluster.sh status              sinfo of the cluster
#   eval "$(slurm/local-cluster.sh env)"       point sbatch/squeue/scontrol at it (sets SLURM_CONF)
#
# Everything lives in $HPC_NCSN_SLURM_DIR (default /tmp/hpc_ncsn-slurm): slurm.conf, state, spool, logs
# and started.list (the PIDs and /etc/hosts lines this script added). The system's /etc/slurm is not
# touched; clients find the cluster through SLURM_CONF, which jobs inherit.
# Facts behind the settings: ../shared/NOTES-slurm.md (fast scheduling ticks, cred_expire=10 so that a
# requeued job restarts in ~11 s, no cgroups, MULTIPLE_SLURMD for several nodes on one host).
set -euo pipefail

DIR="${HPC_NCSN_SLURM_DIR:-/tmp/hpc_ncsn-slurm}"
CONF="$DIR/slurm.conf"
STARTED="$DIR/started.list"
HOSTS_TAG="# hpc_ncsn local slurm"

die() { echo "local-cluster: $*" >&2; exit 1; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] || die "Slurm is not installed and installing needs root: run as root, or apt-get install slurmctld slurmd slurm-client munge"
    command -v apt-get >/dev/null || die "no apt-get: install slurmctld, slurmd, slurm-client and munge with your package manager"
    echo "local-cluster: installing slurmctld slurmd slurm-client munge" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        slurmctld slurmd slurm-client munge >"$DIR/apt.log" 2>&1 \
        || { apt-get update -q >>"$DIR/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
             --no-install-recommends slurmctld slurmd slurm-client munge >>"$DIR/apt.log" 2>&1; } \
        || die "apt-get install failed; see $DIR/apt.log"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return  # a munged is already running: use it, and leave it alone on stop
    fi
    [ -f /etc/munge/munge.key ] || die "/etc/munge/munge.key is missing; reinstall munge or create it with mungekey"
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
            echo "pid $(pgrep -u munge -n munged) munged" >>"$STARTED"
            return
        fi
        sleep 0.1
    done
    die "munged did not start"
}

write_conf() {
    local nodes="$1" host cpus memory
    host="$(hostname)"
    cpus="$(nproc)"
    memory="$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)"
    memory="${memory:-1024}"
    mkdir -p "$DIR/state" "$DIR/log"
    cat >"$CONF" <<EOF
# Written by slurm/local-cluster.sh; one host${nodes:+, $nodes simulated node(s)}.
ClusterName=hpcncsn
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=6817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000,sched_interval=2,bf_interval=2
ReturnToService=2
MinJobAge=3600
MailProg=/bin/true
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
EOF
    local names=()
    if [ "$nodes" -le 1 ]; then
        echo "NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN" >>"$CONF"
        names=("$host")
    else
        local port=17001
        for i in $(seq "$nodes"); do
            echo "NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port + i)) CPUs=$cpus RealMemory=$memory State=UNKNOWN" >>"$CONF"
            names+=("n$i")
        done
    fi
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO" >>"$CONF"
    printf '%s\n' "${names[@]}" >"$DIR/nodes"
}

add_host_names() {
    # Simulated nodes must resolve (submitit takes MASTER_ADDR from the first node's name).
    local name
    while read -r name; do
        [ "$name" = "$(hostname)" ] && continue
        if ! getent hosts "$name" >/dev/null; then
            echo "127.0.0.1 $name $HOSTS_TAG" >>/etc/hosts
            echo "host $name" >>"$STARTED"
        fi
    done <"$DIR/nodes"
}

start() {
    local nodes=1
    while [ $# -gt 0 ]; do
        case "$1" in
            --nodes) nodes="$2"; shift 2 ;;
            *) die "unknown option $1 (start takes --nodes N)" ;;
        esac
    done
    [ -f "$STARTED" ] && [ -s "$STARTED" ] && die "already started (see $STARTED); run '$0 stop' first"
    mkdir -p "$DIR"
    : >"$STARTED"
    install_packages
    start_munge
    write_conf "$nodes"
    add_host_names
    slurmctld -f "$CONF" -i  # -i: ignore state of an earlier cluster in $DIR/state
    echo "pid $(cat_pid "$DIR/slurmctld.pid") slurmctld" >>"$STARTED"
    local name
    while read -r name; do
        mkdir -p "$DIR/spool/$name"
        if [ "$nodes" -le 1 ]; then slurmd -f "$CONF"; else slurmd -f "$CONF" -N "$name"; fi
        echo "pid $(cat_pid "$DIR/slurmd-$name.pid") slurmd $name" >>"$STARTED"
    done <"$DIR/nodes"
    wait_idle "$nodes"
    echo "local-cluster: $(wc -l <"$DIR/nodes") node(s) idle; use it with: export SLURM_CONF=$CONF" >&2
}

cat_pid() {
    for _ in $(seq 100); do
        if [ -s "$1" ]; then cat "$1"; return; fi
        sleep 0.1
    done
    die "no pid file $1; see $DIR/log/"
}

wait_idle() {
    local want="$1" idle
    [ "$want" -ge 1 ] || want=1
    for _ in $(seq 300); do
        idle="$(SLURM_CONF="$CONF" sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l)"
        [ "$idle" -ge "$want" ] && return
        sleep 0.1
    done
    SLURM_CONF="$CONF" sinfo -N >&2 || true
    die "nodes did not become idle within 30 s; see $DIR/log/"
}

stop() {
    [ -f "$STARTED" ] || { echo "local-cluster: nothing started from $DIR" >&2; return 0; }
    # Cancel what is still queued, so no job keeps running without its cluster.
    SLURM_CONF="$CONF" scancel --quiet --user "$(id -un)" 2>/dev/null || true
    local kind value rest
    tac "$STARTED" | while read -r kind value rest; do
        case "$kind" in
            pid)
                if kill -0 "$value" 2>/dev/null; then
                    kill "$value"
                    for _ in $(seq 50); do kill -0 "$value" 2>/dev/null || break; sleep 0.1; done
                    kill -0 "$value" 2>/dev/null && kill -9 "$value" || true
                fi ;;
            host)
                sed -i "/^127\.0\.0\.1 $value $HOSTS_TAG\$/d" /etc/hosts ;;
        esac
    done
    rm -f "$STARTED"
    echo "local-cluster: stopped" >&2
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) stop ;;
    status) SLURM_CONF="$CONF" sinfo -N ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "usage: $0 start [--nodes N] | stop | status | env" ;;
esac
