#!/bin/bash
# TIDE distillation on a SLURM cluster, with checkpoint-and-requeue on the time limit.
#
#   mkdir -p logs
#   sbatch slurm/distill.sh conf/cross_llada2.yaml [key=value ...]
#   RUN_DIR=runs/my-run sbatch slurm/distill.sh conf/cross_llada2.yaml   # fixed run dir
#
# How a requeue works: SLURM sends SIGUSR1 to every task 120 s before the time limit;
# tide_lightning.training.preemption.PreemptionCheckpoint saves run_dir/checkpoints/last.ckpt at
# the next step boundary on all ranks, rank 0 runs `scontrol requeue $SLURM_JOB_ID`, and
# the job re-enters the queue with the same job id. When it starts again, this script runs
# with the same arguments and the same run dir, and `resume: auto` continues from
# last.ckpt with the same next batch. See docs/cluster.md.
#
# Adapt the resources to your cluster; keep one task per GPU.
#SBATCH --job-name=tide-distill
#SBATCH --nodes=1                  # trainer.num_nodes follows SLURM_NNODES
#SBATCH --ntasks-per-node=8        # one task (rank) per GPU; trainer.devices follows it
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12         # dataloader workers + tokenizers per rank
#SBATCH --mem=0                    # all memory of the node
#SBATCH --time=24:00:00
# SIGUSR1 to the tasks (not `B:`, which would signal only this batch shell) 120 s
# before the time limit: one training step plus one checkpoint must fit in that time.
#SBATCH --signal=SIGUSR1@120
#SBATCH --requeue                  # allow `scontrol requeue` (and requeue on node failure)
#SBATCH --open-mode=append         # a requeued run appends to the same log
#SBATCH --output=logs/%x-%j.out    # %j stays the same across requeues; logs/ must exist

set -eo pipefail

CONFIG=${1:?usage: sbatch slurm/distill.sh CONFIG.yaml [key=value ...]}
shift

# SLURM runs a copy of this script; work from the directory sbatch was called in.
cd "${SLURM_SUBMIT_DIR:-.}"

# --- environment ----------------------------------------------------------------------
# Load your cluster's modules and activate the project's environment, e.g.:
#   module load cuda/12.4
#   source .venv/bin/activate
if [[ -f .venv/bin/activate ]]; then
    source .venv/bin/activate
fi
set -u
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
# Since SLURM 22.05, srun no longer inherits --cpus-per-task from sbatch.
export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}
export TOKENIZERS_PARALLELISM=false
# Compute nodes often have no internet: models and tokenizers come from local paths.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
# Lightning derives the rendezvous port from the job id; MASTER_PORT overrides it.

# Stays the same across requeues (the job id does), so the relaunch finds last.ckpt.
# To continue a run in a *new* job (e.g. after a failed requeue), pass its RUN_DIR.
RUN_DIR=${RUN_DIR:-runs/$(basename "$CONFIG" .yaml)-${SLURM_JOB_ID}}

echo "job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0}: ${CONFIG} -> ${RUN_DIR}" \
    "on ${SLURM_NNODES} node(s) x ${SLURM_NTASKS_PER_NODE} task(s)"

# One process per GPU, started by srun (Lightning detects SLURM and does not spawn).
# The trailing "$@" passes extra key=value overrides from the sbatch command line.
srun --kill-on-bad-exit=1 \
    python -m tide_lightning fit --config "$CONFIG" \
    run_dir="$RUN_DIR" resume=auto \
    trainer.num_nodes="$SLURM_NNODES" \
    trainer.devices="$SLURM_NTASKS_PER_NODE" \
    trainer.enable_progress_bar=false \
    "$@"
