# Sourced by slurm/train.sbatch and slurm/sample.sbatch: what both do around their srun lines.
#
#   job_setup                      cd to the repository, export MASTER_ADDR/MASTER_PORT for the ranks
#   requeue_if_stopped STATUS      on exit status 75 (a run that saved at USR2: the time limit's warning or a
#                                  preemption), requeue this job; 143 (saved at SIGTERM: scancel) stays stopped
#
# (The sweep's submitit jobs requeue themselves through hpc_ncsn.preemption.requeue.)

job_setup() {
    ROOT="${HPC_NCSN_ROOT:-$SLURM_SUBMIT_DIR}"
    cd "$ROOT" || exit 1
    MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
    MASTER_PORT="$((20000 + SLURM_JOB_ID % 20000))"
    export ROOT MASTER_ADDR MASTER_PORT HDF5_USE_FILE_LOCKING=FALSE
    echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $SLURM_NTASKS rank(s) on $SLURM_JOB_NODELIST," \
         "master $MASTER_ADDR:$MASTER_PORT"
}

requeue_if_stopped() {
    if [ "$1" -eq 75 ]; then
        echo "preempted: requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID"
    fi
}
