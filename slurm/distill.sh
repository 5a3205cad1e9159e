#!/bin/bash
# TIDE distillation on a SLURM cluster, with checkpoint-and-requeue on the time limit.
#
#   sbatch slurm/distill.sh conf/cross_llada2.yaml [key=value ...]
#   TIDE_RUN_DIR=runs/my-run sbatch slurm/distill.sh conf/cross_llada2.yaml   # fixed run dir
#
# TIDE_RUN_DIR is the one run-dir variable: the cluster configs read it too
# (run_dir: ${oc.env:TIDE_RUN_DIR,...}). Default: runs/<config name>-<job id>.
# The job's log goes to logs/<job name>-<job id>.out (TIDE_LOG_DIR), a folder this script
# creates; SLURM itself writes only a one-line pointer to it in the submit directory.
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
#SBATCH --output=%x-%j.out         # the pointer line; the log proper is under logs/

set -eo pipefail

usage="usage: sbatch slurm/distill.sh CONFIG.yaml [key=value ...]"
die() { echo "slurm/distill.sh: $*" >&2; exit 2; }
[[ -n "${SLURM_JOB_ID:-}" ]] || die "not inside a SLURM job; submit it: $usage"
[[ $# -ge 1 ]] || die "$usage"
CONFIG=$1
shift
[[ -z "${RUN_DIR:-}" || -n "${TIDE_RUN_DIR:-}" ]] ||
    die "RUN_DIR is not read any more: set TIDE_RUN_DIR=$RUN_DIR (the configs read it too)"

# SLURM runs a copy of this script; work from the directory sbatch was called in.
cd "${SLURM_SUBMIT_DIR:-.}"
[[ -f "$CONFIG" ]] || die "config file $CONFIG not found (from $(pwd))"

# Tasks per node: --ntasks-per-node sets SLURM_NTASKS_PER_NODE (e.g. "8" or "8(x2)");
# with only --ntasks, SLURM_NTASKS is spread over SLURM_NNODES nodes.
NODES=${SLURM_NNODES:-1}
if [[ -n "${SLURM_NTASKS_PER_NODE:-}" ]]; then
    TASKS_PER_NODE=${SLURM_NTASKS_PER_NODE%%(*}
else
    TASKS=${SLURM_NTASKS:-1}
    (( TASKS % NODES == 0 )) || die "--ntasks=$TASKS does not split evenly over $NODES nodes"
    TASKS_PER_NODE=$(( TASKS / NODES ))
fi

# The log proper: a folder of our own, appended to across requeues (same job id).
LOG_DIR=${TIDE_LOG_DIR:-logs}
mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/${SLURM_JOB_NAME:-tide-distill}-${SLURM_JOB_ID}.out"
echo "log: $LOG"
exec >>"$LOG" 2>&1

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
# To continue a run in a *new* job (e.g. after a failed requeue), pass its TIDE_RUN_DIR.
export TIDE_RUN_DIR=${TIDE_RUN_DIR:-runs/$(basename "$CONFIG" .yaml)-${SLURM_JOB_ID}}

echo "job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0}: ${CONFIG} -> ${TIDE_RUN_DIR}" \
    "on ${NODES} node(s) x ${TASKS_PER_NODE} task(s)"

# One process per GPU, started by srun (Lightning detects SLURM and does not spawn).
# The trailing "$@" passes extra key=value overrides from the sbatch command line.
srun --kill-on-bad-exit=1 \
    python -m tide_lightning fit --config "$CONFIG" \
    run_dir="$TIDE_RUN_DIR" resume=auto \
    trainer.num_nodes="$NODES" \
    trainer.devices="$TASKS_PER_NODE" \
    trainer.enable_progress_bar=false \
    "$@"
