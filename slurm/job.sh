# Shared by the slurm/*.sbatch scripts (nothing to edit here: site settings are in site.sh).
#
#   source job.sh; phasenet_job phasenet build ...
#
# Runs a command in its own process group and waits for it. Signals, as set up by the
# scripts' `#SBATCH --signal=B:USR1@300` and `#SBATCH --requeue`:
#   USR1  (time limit near, or `scancel --signal=USR1 --batch JOB`): stop the command (TERM to
#         its whole process group: phasenet's worker processes too), wait for it, then
#         `scontrol requeue $SLURM_JOB_ID`: the job goes back to the queue and, started again,
#         continues where it stopped (builds reuse their finished parts, training runs with
#         --resume from its last checkpoint).
#   TERM  (scancel, preemption, the time limit itself): stop the command the same way and exit;
#         Slurm decides what follows (a preempted job with --requeue is requeued by Slurm).
# Exit status: the command's; 0 after a requeue.

phasenet_log() { echo "[phasenet-job $(date '+%F %T')] $*"; }

_phasenet_stop() {
    local sig=$1
    if [ -n "${PHASENET_CHILD:-}" ] && kill -0 "$PHASENET_CHILD" 2>/dev/null; then
        phasenet_log "sending $sig to process group $PHASENET_CHILD"
        kill "-$sig" -- "-$PHASENET_CHILD" 2>/dev/null || kill "-$sig" "$PHASENET_CHILD" 2>/dev/null || true
        # give it up to 60 s to finish what it is writing (parts and checkpoints are atomic)
        local waited=0
        while kill -0 "$PHASENET_CHILD" 2>/dev/null && [ "$waited" -lt 600 ]; do
            sleep 0.1; waited=$((waited + 1))
        done
        kill -0 "$PHASENET_CHILD" 2>/dev/null && kill -KILL -- "-$PHASENET_CHILD" 2>/dev/null
        wait "$PHASENET_CHILD" 2>/dev/null || true
    fi
}

_phasenet_on_usr1() {
    phasenet_log "USR1: time limit near or checkpoint requested; stopping and requeueing job ${SLURM_JOB_ID:-?}"
    _phasenet_stop TERM
    if [ -n "${SLURM_JOB_ID:-}" ] && scontrol requeue "$SLURM_JOB_ID"; then
        phasenet_log "requeued job $SLURM_JOB_ID; it continues from its checkpoint when it starts again"
        exit 0
    fi
    phasenet_log "could not requeue (job submitted without --requeue?); stopping"
    exit 1
}

_phasenet_on_term() {
    phasenet_log "TERM: job cancelled, preempted or out of time; stopping"
    _phasenet_stop TERM
    exit 143
}

phasenet_job() {
    phasenet_log "job ${SLURM_JOB_ID:-local}${SLURM_ARRAY_TASK_ID:+ (array task $SLURM_ARRAY_TASK_ID)}" \
        "on $(hostname), start ${SLURM_RESTART_COUNT:-0} restart(s): $*"
    trap _phasenet_on_usr1 USR1
    trap _phasenet_on_term TERM INT
    # setsid: the command leads its own process group, so one kill reaches its workers.
    setsid "$@" &
    PHASENET_CHILD=$!
    local rc
    while true; do
        wait "$PHASENET_CHILD"
        rc=$?
        # wait returns early (status > 128) when a trapped signal arrives; the trap has run
        # (and exited the script) unless the child is still running.
        kill -0 "$PHASENET_CHILD" 2>/dev/null || break
    done
    PHASENET_CHILD=
    trap - USR1 TERM INT
    phasenet_log "command finished with exit status $rc"
    return "$rc"
}
