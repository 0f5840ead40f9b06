#!/usr/bin/env bash
# Delete the slice (or its queued resource), after asking unless --yes.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT [--queued] [--yes] [flags]

Delete TPU NAME; with --queued, delete queued resource NAME and its TPU (create.sh
--queued). Local disks go with it: logs.sh --fetch first; checkpoints on gs:// stay.

  --queued             the slice came from create.sh --queued
  --yes                do not ask (needed when stdin is not a terminal)
  --name NAME  --zone ZONE  --project PROJECT      (as create.sh; env SGV_*)
  --dry-run            print the commands, run nothing (and ask nothing)
  -h, --help
EOF
}

QUEUED=0 YES=0
BOOL_FLAGS+=([--queued]=QUEUED [--yes]=YES)
parse_args "$@"
loc_flags

if [[ $DRY_RUN != 1 && $YES != 1 ]]; then
  [[ -t 0 ]] || die "stdin is not a terminal: pass --yes to delete $TPU_NAME without asking"
  read -r -p "Delete TPU $TPU_NAME in $ZONE${PROJECT:+ (project $PROJECT)}? [y/N] " answer
  [[ $answer == [yY] || $answer == [yY][eE][sS] ]] || die "not deleted"
fi
# --quiet: gcloud would ask again; the question above (or --yes) already settled it.
if [[ $QUEUED == 1 ]]; then
  run gcloud compute tpus queued-resources delete "$TPU_NAME" "${LOC[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${LOC[@]}" --quiet
fi
