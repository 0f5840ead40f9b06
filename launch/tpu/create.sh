#!/usr/bin/env bash
# Create a TPU VM or pod slice, directly or through a queued resource.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT [flags] [-- extra gcloud flags]

Create TPU VM/slice NAME (v4-8: one host; v4-32, v5p-32 ...: a pod slice, one VM per worker).

  --name NAME          TPU (node) name            [SGV_TPU_NAME, default sgv-tpu]
  --zone ZONE                                     [SGV_ZONE, default us-central2-b]
  --project PROJECT    default: gcloud's project  [SGV_PROJECT]
  --accelerator TYPE   e.g. v4-8, v4-32, v5p-32   [SGV_ACCELERATOR, default v4-8]
  --runtime VERSION    TPU software image         [SGV_RUNTIME, default: by accelerator,
                       v4: tpu-ubuntu2204-base, v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e]
  --queued             request through a queued resource (named NAME too): waits in the
                       queue for capacity instead of failing when the zone is full
  --spot               spot (preemptible) capacity
  --best-effort        best-effort tier; implies --queued, uses \`gcloud alpha\`
  --dry-run            print the commands, run nothing
  -h, --help

Words after -- go to gcloud as they are (e.g. -- --network=my-net --valid-until-duration=6h).
Check progress with status.sh (add --queued for the queue state).
EOF
}

QUEUED=0 SPOT=0 BEST_EFFORT=0
VALUE_FLAGS+=([--accelerator]=ACCELERATOR [--runtime]=RUNTIME)
BOOL_FLAGS+=([--queued]=QUEUED [--spot]=SPOT [--best-effort]=BEST_EFFORT)
parse_args "$@"

if [[ $SPOT == 1 && $BEST_EFFORT == 1 ]]; then die "--spot and --best-effort exclude each other"; fi
if [[ $BEST_EFFORT == 1 ]]; then QUEUED=1; fi
RUNTIME=${RUNTIME:-$(default_runtime "$ACCELERATOR")}
loc_flags

if [[ $QUEUED == 1 ]]; then
  # --best-effort exists only in the alpha track of gcloud (checked with SDK 528).
  GCLOUD=(gcloud)
  if [[ $BEST_EFFORT == 1 ]]; then GCLOUD=(gcloud alpha); fi
  cmd=("${GCLOUD[@]}" compute tpus queued-resources create "$TPU_NAME" "${LOC[@]}"
    "--node-id=$TPU_NAME" "--accelerator-type=$ACCELERATOR" "--runtime-version=$RUNTIME")
  if [[ $SPOT == 1 ]]; then cmd+=(--spot); fi
  if [[ $BEST_EFFORT == 1 ]]; then cmd+=(--best-effort); fi
else
  cmd=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${LOC[@]}"
    "--accelerator-type=$ACCELERATOR" "--version=$RUNTIME")
  if [[ $SPOT == 1 ]]; then cmd+=(--spot); fi
fi
run "${cmd[@]}" "${EXTRA_ARGS[@]}"
