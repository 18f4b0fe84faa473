#!/bin/bash
# dejavu pipeline --scheduler slurm: submits the steps with their dependencies (afterok); with --wait, waits for the
# last one and exits with its status. Every job reads and writes {{workdir}}: it must be on storage all nodes share.
set -euo pipefail
cd "$(dirname "$0")"
wait_flag=""; [ "${1:-}" = "--wait" ] && wait_flag="--wait"
cal=$(sbatch --parsable collect-calibration.sbatch)
held=$(sbatch --parsable collect-heldout.sbatch)
mcal=$(sbatch --parsable --kill-on-invalid-dep=yes --dependency=afterok:${cal%%;*} merge-calibration.sbatch)
mheld=$(sbatch --parsable --kill-on-invalid-dep=yes --dependency=afterok:${held%%;*} merge-heldout.sbatch)
train=$(sbatch --parsable --kill-on-invalid-dep=yes --dependency=afterok:${mcal%%;*} train.sbatch)
mpred=$(sbatch --parsable --kill-on-invalid-dep=yes --dependency=afterok:${train%%;*} merge-predictors.sbatch)
echo "submitted: collect ${cal%%;*} ${held%%;*}, merge ${mcal%%;*} ${mheld%%;*}, train ${train%%;*}, merge ${mpred%%;*}"
sbatch --parsable $wait_flag --kill-on-invalid-dep=yes --dependency=afterok:${mheld%%;*}:${mpred%%;*} finish.sbatch
