#!/usr/bin/env bash
# Show the slice's state and, per worker, whether a run is alive and its last log line.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT [--queued] [--no-workers] [flags]

  --queued             also show the queued resource NAME (create.sh --queued)
  --no-workers         only ask the TPU API (the workers may not be up yet)
  --name NAME  --zone ZONE  --project PROJECT      (as create.sh; env SGV_*)
  --dry-run            print the commands, run nothing
  -h, --help
EOF
}

QUEUED=0 NO_WORKERS=0
BOOL_FLAGS+=([--queued]=QUEUED [--no-workers]=NO_WORKERS)
parse_args "$@"
loc_flags

if [[ $QUEUED == 1 ]]; then
  run gcloud compute tpus queued-resources describe "$TPU_NAME" "${LOC[@]}" '--format=value(state.state)'
fi
run gcloud compute tpus tpu-vm describe "$TPU_NAME" "${LOC[@]}" \
  '--format=yaml(state,health,acceleratorType,runtimeVersion)'
if [[ $NO_WORKERS == 1 ]]; then exit 0; fi
on_workers all "pid=\$(cat $LOG_DIR/train.pid 2>/dev/null || true)
if [ -n \"\$pid\" ] && kill -0 \"\$pid\" 2>/dev/null; then state=\"running (pid \$pid)\"; else state=stopped; fi
echo \"\$(hostname): \$state; \$(tail -n 1 $LOG_DIR/latest 2>/dev/null || echo no log)\""
