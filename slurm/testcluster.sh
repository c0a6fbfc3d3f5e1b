#!/usr/bin/env bash
# A private single-node Slurm cluster on localhost, for phasenet's tests and for trying
# the sbatch scripts on a laptop. Not for production.
#
#   slurm/testcluster.sh start  [DIR]   write the config into DIR, start munged, slurmctld, slurmd
#   slurm/testcluster.sh stop   [DIR]   stop exactly the processes `start` recorded in DIR/pids
#   slurm/testcluster.sh status [DIR]   which recorded processes live; sinfo
#   slurm/testcluster.sh env    [DIR]   the line to eval so that sbatch/squeue/sinfo find it
#
# DIR defaults to $PHASENET_SLURM_TEST_DIR or /tmp/phasenet-slurm. Everything lives there:
# slurm.conf, gres.conf, the munge key and socket, spool folders, logs, the pid file. Nothing
# in /etc is touched; clients find the cluster through SLURM_CONF=DIR/etc/slurm.conf.
#
# Needs root (slurmd launches jobs as their users) and Debian's packages:
#   apt-get install -y slurm-wlm munge
# Facts behind the settings (measured, see ../shared/reference/BRIEF.md §6): proctrack/linuxproc
# and task/none need no cgroup set-up; select/cons_tres with DefMemPerCPU lets jobs share the
# node; cred_expire=10 lets a requeued job start again after ~11 s instead of
# Slurm's default ~121 s; jobcomp/filetxt keeps a record of finished jobs without slurmdbd (`sacct -c` reads it).
# The node declares 2 fake GPUs (plain files stand in for the devices) so that GPU requests are scheduled
# the way a GPU cluster schedules them; the jobs themselves run on the CPU.
set -euo pipefail

cmd=${1:-status}
DIR=${2:-${PHASENET_SLURM_TEST_DIR:-/tmp/phasenet-slurm}}
CPUS=${PHASENET_SLURM_TEST_CPUS:-2}
MEMORY_MB=${PHASENET_SLURM_TEST_MEMORY_MB:-4096}
CTLD_PORT=${PHASENET_SLURM_TEST_PORT:-16817}
CONF="$DIR/etc/slurm.conf"
PIDS="$DIR/pids"

die() { echo "testcluster: $*" >&2; exit 1; }

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

write_config() {
    mkdir -p "$DIR"/{etc,log,munge,spool/ctld,spool/d,run}
    chmod 711 "$DIR/munge"
    if [ ! -s "$DIR/munge/munge.key" ]; then
        head -c 1024 /dev/urandom > "$DIR/munge/munge.key"
    fi
    chmod 400 "$DIR/munge/munge.key"
    cat > "$CONF" <<EOF
# Written by slurm/testcluster.sh: a single-node test cluster on localhost.
ClusterName=phasenet-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((CTLD_PORT + 1))
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
MinJobAge=600
KillWait=5
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY_MB Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    # Slurm drops GPUs without device files; plain files stand in for /dev/nvidia0-1.
    mkdir -p "$DIR/dev" && touch "$DIR/dev/fakegpu0" "$DIR/dev/fakegpu1"
    cat > "$DIR/etc/gres.conf" <<EOF
NodeName=localhost Name=gpu File=$DIR/dev/fakegpu[0-1]
EOF
    cat > "$DIR/etc/cgroup.conf" <<EOF
# Not used: ProctrackType=proctrack/linuxproc and TaskPlugin=task/none need no cgroups.
EOF
}

recorded() { [ -f "$PIDS" ] && cat "$PIDS" || true; }

start() {
    [ "$(id -u)" = 0 ] || die "needs root (slurmd runs jobs as their users)"
    for b in munged slurmctld slurmd sinfo; do
        command -v "$b" >/dev/null || die "$b not found: apt-get install -y slurm-wlm munge"
    done
    if [ -f "$PIDS" ]; then
        local any=0
        while read -r name pid; do alive "$pid" && any=1; done < "$PIDS"
        [ "$any" = 1 ] && die "already running from $DIR (slurm/testcluster.sh stop $DIR first)"
        rm -f "$PIDS"
    fi
    write_config
    rm -rf "$DIR/spool/ctld"/* "$DIR/spool/d"/*  # a fresh cluster: no jobs left from before
    : > "$PIDS"

    munged --foreground --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed" --force > "$DIR/log/munged.out" 2>&1 &
    echo "munged $!" >> "$PIDS"
    for _ in $(seq 50); do [ -S "$DIR/munge/munge.socket" ] && break; sleep 0.1; done
    [ -S "$DIR/munge/munge.socket" ] || { stop; die "munged did not start: see $DIR/log/munged.log"; }

    export SLURM_CONF="$CONF"  # daemons look for gres.conf/cgroup.conf beside it
    slurmctld -D -f "$CONF" > "$DIR/log/slurmctld.out" 2>&1 &
    echo "slurmctld $!" >> "$PIDS"
    slurmd -D -N localhost -f "$CONF" > "$DIR/log/slurmd.out" 2>&1 &
    echo "slurmd $!" >> "$PIDS"

    export SLURM_CONF="$CONF"
    for _ in $(seq 150); do
        state=$(sinfo -h -N -n localhost -o %T 2>/dev/null || true)
        case "$state" in idle*|mixed*|allocated*) break ;; esac
        sleep 0.2
    done
    case "${state:-}" in
        idle*|mixed*|allocated*) ;;
        *) stop; die "the node did not come up (state '${state:-none}'): see $DIR/log/slurmctld.log, $DIR/log/slurmd.log" ;;
    esac
    echo "test cluster up in $DIR (node localhost: $state, $CPUS CPUs, ${MEMORY_MB} MB)"
    echo "use it with: export SLURM_CONF=$CONF"
}

stop() {
    [ -f "$PIDS" ] || { echo "testcluster: nothing recorded in $PIDS"; return 0; }
    # Reverse order: slurmd, slurmctld, then munged (the daemons need munge to shut down).
    tac "$PIDS" | while read -r name pid; do
        if alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
            alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
            echo "stopped $name ($pid)"
        fi
    done
    rm -f "$PIDS"
}

status() {
    local up=0
    if [ -f "$PIDS" ]; then
        while read -r name pid; do
            if alive "$pid"; then echo "$name $pid running"; up=1; else echo "$name $pid gone"; fi
        done < "$PIDS"
    else
        echo "not started from $DIR"
    fi
    [ "$up" = 1 ] && SLURM_CONF="$CONF" sinfo -N -o "%N %T %c %m %G" || true
    [ "$up" = 1 ]
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "usage: $0 start|stop|status|env [DIR]" ;;
esac
