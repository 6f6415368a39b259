#!/usr/bin/env bash
# A real Slurm cluster on this machine, for development, tests and trying a sweep on a workstation.
#
#   slurm/local-cluster.sh start [--nodes N] [--max-array-size M]
#                                              install (Debian/Ubuntu packages, needs root), configure, start
#                                              munged + slurmctld + N slurmd (simulated nodes), wait until idle;
#                                              MaxArraySize=M (Slurm's default 1001) to try a site's lower limit
#   slurm/local-cluster.sh stop                cancel its jobs, stop every process it started (daemons, job
#                                              steps, job processes), undo its /etc/hosts lines; munged only
#                                              if a local cluster started it and no other one uses it
#   slurm/local-cluster.sh restart-node N      kill node N's slurmd (a node failure) and start it again
#   slurm/local-cluster.sh kill-node N         kill node N's slurmd and every job process on it, leave it down
#   slurm/local-cluster.sh status              sinfo of the cluster
#   eval "$(slurm/local-cluster.sh env)"       point sbatch/squeue/scontrol at it (sets SLURM_CONF)
#
# Everything lives in $HPC_NCSN_SLURM_DIR (default /tmp/hpc_ncsn-slurm): slurm.conf, state, spool, logs,
# and started.list (the PIDs and /etc/hosts lines this script added). The cluster has its own name
# (ncsn<hash of that folder>), its own node names (<name>n1, <name>n2, ...) and free ports picked at start,
# so it runs beside any other Slurm on this machine (the system's /etc/slurm is not touched) and `stop`
# acts only on the controller that reports this cluster's name.
#
# Settings for a fast, small cluster: scheduling ticks of 2 s, cred_expire=10 (a requeued job may start
# again after 11 s instead of 2 minutes), no cgroups (proctrack/linuxproc, task/none), several slurmd on one
# host (Debian builds Slurm with MULTIPLE_SLURMD), SlurmdTimeout=20 (a killed node is noticed in ~20 s).
set -euo pipefail

DIR="${HPC_NCSN_SLURM_DIR:-/tmp/hpc_ncsn-slurm}"
CONF="$DIR/slurm.conf"
STARTED="$DIR/started.list"
NAME="ncsn$(printf '%s' "$(realpath -m "$DIR")" | cksum | cut -c1-8)"
HOSTS_TAG="# hpc_ncsn local slurm $NAME"

die() { echo "local-cluster: $*" >&2; exit 1; }
say() { echo "local-cluster: $*" >&2; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] || die "Slurm is not installed and installing needs root: run as root, or apt-get install slurmctld slurmd slurm-client munge"
    command -v apt-get >/dev/null || die "no apt-get: install slurmctld, slurmd, slurm-client and munge with your package manager"
    say "installing slurmctld slurmd slurm-client munge"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        slurmctld slurmd slurm-client munge >"$DIR/apt.log" 2>&1 \
        || { apt-get update -q >>"$DIR/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
             --no-install-recommends slurmctld slurmd slurm-client munge >>"$DIR/apt.log" 2>&1; } \
        || die "apt-get install failed; see $DIR/apt.log"
}

# munged is shared by every local cluster on this machine (and maybe by the system). Each cluster that uses it
# leaves a file in MUNGE_USERS; one that had to start it records its pid in MUNGE_STARTED. A cluster's stop stops
# munged only if a local cluster started it and no other live local cluster uses it.
MUNGE_USERS=/run/munge/hpc_ncsn-clusters
MUNGE_STARTED=/run/munge/hpc_ncsn-munged.pid

start_munge() {
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        [ -f /etc/munge/munge.key ] || die "/etc/munge/munge.key is missing; reinstall munge or create it with mungekey"
        install -d -o munge -g munge -m 0755 /run/munge
        runuser -u munge -- /usr/sbin/munged
        local up=""
        for _ in $(seq 50); do
            if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then up=1; break; fi
            sleep 0.1
        done
        [ -n "$up" ] || die "munged did not start"
        cat /run/munge/munged.pid >"$MUNGE_STARTED" 2>/dev/null || pgrep -u munge -n -x munged >"$MUNGE_STARTED"
    fi
    if install -d -m 0755 "$MUNGE_USERS" 2>/dev/null && realpath -m "$DIR" >"$MUNGE_USERS/$NAME" 2>/dev/null; then
        echo "munge $NAME" >>"$STARTED"
    fi  # (not root: it only uses a munged that was running, and leaves it alone)
}

release_munge() {  # this cluster no longer uses munged: stop it if a local cluster started it and none uses it now
    rm -f "$MUNGE_USERS/$NAME"
    local user pid
    for user in "$MUNGE_USERS"/*; do
        [ -e "$user" ] || continue
        if [ -s "$(cat "$user")/started.list" ]; then
            say "munged left running: cluster $(basename "$user") uses it"
            return 0
        fi
        rm -f "$user"  # a cluster that was stopped or whose folder is gone
    done
    [ -f "$MUNGE_STARTED" ] || return 0  # it ran before any local cluster: not ours to stop
    pid="$(cat "$MUNGE_STARTED")"
    rm -f "$MUNGE_STARTED"
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = munged ] && stop_pid "$pid"
    return 0
}

free_ports() {  # N free TCP ports on this machine
    python3 - "$1" <<'EOF'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))
EOF
}

write_conf() {
    local nodes="$1" max_array="$2" host cpus memory ports
    host="$(hostname)"
    cpus="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"  # nproc reports OMP_NUM_THREADS when it is set
    memory="$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)"
    memory="${memory:-1024}"
    read -r -a ports <<<"$(free_ports $((nodes + 1)))"
    rm -rf "$DIR/state" "$DIR/spool"  # a fresh cluster: no jobs or names of an earlier one
    mkdir -p "$DIR/state" "$DIR/log"
    cat >"$CONF" <<EOF
# Written by slurm/local-cluster.sh: cluster $NAME, one host, $nodes simulated node(s).
ClusterName=$NAME
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${ports[0]}
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
SlurmdTimeout=20
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
    [ -z "$max_array" ] || echo "MaxArraySize=$max_array" >>"$CONF"
    : >"$DIR/nodes"
    for i in $(seq "$nodes"); do
        echo "NodeName=${NAME}n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=${ports[$i]} CPUs=$cpus" \
             "RealMemory=$memory State=UNKNOWN" >>"$CONF"
        echo "${NAME}n$i" >>"$DIR/nodes"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO" >>"$CONF"
}

add_host_names() {
    # Simulated nodes must resolve (submitit takes MASTER_ADDR from the first node's name).
    local name
    while read -r name; do
        if ! getent hosts "$name" >/dev/null; then
            echo "127.0.0.1 $name $HOSTS_TAG" >>/etc/hosts
            echo "host $name" >>"$STARTED"
        fi
    done <"$DIR/nodes"
}

other_slurm() {  # a slurmctld running on this machine that this folder did not start
    local pid
    for pid in $(pgrep -x slurmctld 2>/dev/null); do
        grep -q "^pid $pid slurmctld" "$STARTED" 2>/dev/null || { echo "$pid"; return; }
    done
}

start_slurmd() {
    local name="$1"
    mkdir -p "$DIR/spool/$name"
    rm -f "$DIR/slurmd-$name.pid"
    slurmd -f "$CONF" -N "$name"
    echo "pid $(cat_pid "$DIR/slurmd-$name.pid") slurmd $name" >>"$STARTED"
}

start() {
    local nodes=1 max_array="" other
    while [ $# -gt 0 ]; do
        case "$1" in
            --nodes) nodes="$2"; shift 2 ;;
            --max-array-size) max_array="$2"; shift 2 ;;
            *) die "unknown option $1 (start takes --nodes N and --max-array-size M)" ;;
        esac
    done
    [ -f "$STARTED" ] && [ -s "$STARTED" ] && die "already started from $DIR (see $STARTED); run '$0 stop' first"
    mkdir -p "$DIR"
    : >"$STARTED"
    install_packages
    other="$(other_slurm)"
    [ -z "$other" ] || say "another Slurm runs here (slurmctld pid $other); starting cluster $NAME beside it, on its own ports"
    start_munge
    write_conf "$nodes" "$max_array"
    add_host_names
    SLURM_CONF="$CONF" slurmctld -f "$CONF" -i  # -i: ignore state of an earlier cluster in $DIR/state
    echo "pid $(cat_pid "$DIR/slurmctld.pid") slurmctld" >>"$STARTED"
    local name
    while read -r name; do
        SLURM_CONF="$CONF" start_slurmd "$name"
    done <"$DIR/nodes"
    wait_idle "$nodes"
    say "cluster $NAME: $(wc -l <"$DIR/nodes") node(s) idle; use it with: export SLURM_CONF=$CONF"
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

ours_answers() {  # the controller at our port reports our cluster name
    local config
    config="$(SLURM_CONF="$CONF" scontrol show config 2>/dev/null)" || return 1
    grep -q "^ClusterName *= *$NAME\$" <<<"$config"
}

job_processes() {  # slurmstepd and job processes of this cluster (on node $1 only, if given)
    local pid environ node="${1:-}"
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        [ "$pid" = "$$" ] && continue
        environ="$( { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null)" || continue
        grep -qx "SLURM_CONF=$CONF" <<<"$environ" || continue  # started by this cluster's daemons or jobs
        if grep -q '^slurmstepd' "/proc/$pid/cmdline" 2>/dev/null; then
            # A step daemon keeps its node's slurmd log open.
            [ -z "$node" ] || ls -l "/proc/$pid/fd" 2>/dev/null | grep -q "slurmd-$node\.log" || continue
        elif grep -q '^SLURM_JOB_ID=' <<<"$environ"; then
            [ -z "$node" ] || grep -qx "SLURMD_NODENAME=$node" <<<"$environ" || continue
        else
            continue
        fi
        echo "$pid"
    done
}

stop_pid() {
    local pid="$1"
    kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    [ -f "$STARTED" ] || { say "nothing started from $DIR"; return 0; }
    if ours_answers; then
        # Cancel this cluster's jobs and give them KillWait to save and leave.
        SLURM_CONF="$CONF" scancel --quiet --user "$(id -un)" 2>/dev/null || true
        for _ in $(seq 40); do
            [ -z "$(SLURM_CONF="$CONF" squeue -h -t running,completing -o %i 2>/dev/null)" ] && break
            sleep 1
        done
    else
        say "the controller at $CONF's port is not cluster $NAME (or is down): cancelling nothing there"
    fi
    local kind value rest pid
    tac "$STARTED" | while read -r kind value rest; do
        case "$kind" in
            pid) stop_pid "$value" ;;
            munge) release_munge ;;
            host) sed -i "/^127\.0\.0\.1 $value $HOSTS_TAG\$/d" /etc/hosts ;;
        esac
    done
    for pid in $(job_processes); do
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -f "$STARTED"
    say "cluster $NAME stopped"
}

node_name() {
    local name
    name="$(sed -n "${1}p" "$DIR/nodes" 2>/dev/null)"
    [ -n "$name" ] || die "no node $1 (nodes: $(tr '\n' ' ' <"$DIR/nodes" 2>/dev/null))"
    echo "$name"
}

kill_node() {  # a node failure: its slurmd and every job process on it die at once
    local name pid
    name="$(node_name "$1")"
    pid="$(cat "$DIR/slurmd-$name.pid" 2>/dev/null || true)"
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    for pid in $(job_processes "$name"); do
        kill -9 "$pid" 2>/dev/null || true
    done
    say "node $name killed (slurmd and its job processes)"
}

restart_node() {
    local name pid
    name="$(node_name "$1")"
    pid="$(cat "$DIR/slurmd-$name.pid" 2>/dev/null || true)"
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    SLURM_CONF="$CONF" start_slurmd "$name"
    say "node $name restarted"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) stop ;;
    restart-node) [ $# -eq 2 ] || die "usage: $0 restart-node N"; restart_node "$2" ;;
    kill-node) [ $# -eq 2 ] || die "usage: $0 kill-node N"; kill_node "$2" ;;
    status) SLURM_CONF="$CONF" sinfo -N ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "usage: $0 start [--nodes N] [--max-array-size M] | stop | restart-node N | kill-node N | status | env" ;;
esac
