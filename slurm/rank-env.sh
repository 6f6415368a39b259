#!/usr/bin/env bash
# Run a command as one torch.distributed rank of a Slurm job step: `srun slurm/rank-env.sh python train.py ...`.
# Slurm starts one task per GPU (or per CPU slot); this maps Slurm's task variables onto the ones that
# torch.distributed and Accelerate read. MASTER_ADDR/MASTER_PORT come from the batch script.
set -euo pipefail
export RANK="$SLURM_PROCID" WORLD_SIZE="$SLURM_NTASKS" LOCAL_RANK="$SLURM_LOCALID"
export LOCAL_WORLD_SIZE="${SLURM_NTASKS_PER_NODE%%(*}" GROUP_RANK="$SLURM_NODEID"
exec "$@"
