#!/bin/bash
# Submits the worker array, then the merge, which starts only once every
# array task has succeeded.
#
#   CONFIG=/shared/job.toml deploy/slurm/submit.sh [extra sbatch options for the array]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
STOOK=${STOOK:-stook}
CONFIG=${CONFIG:?set CONFIG to the job config, on shared storage}
export STOOK CONFIG
array=$(sbatch --parsable "$@" "$here/stook-array.sbatch")
merge=$(sbatch --parsable --job-name=stook-merge --dependency="afterok:${array%%;*}" \
    --output=stook-merge-%j.log --wrap "\"$STOOK\" merge \"$CONFIG\"")
echo "workers: job $array; merge: job $merge (after the workers succeed)"
echo "progress: $STOOK status $CONFIG"
