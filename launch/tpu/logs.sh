#!/usr/bin/env bash
# Show the training logs of one worker or all, or copy them all here.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT [--worker all|N] [--lines N] [--follow] [--run RUN] [--fetch DIR] [flags]

Print the end of $LOG_DIR/latest (the last run train.sh started) on worker 0, or
of RUN's log with --run. On a pod, worker 0 hosts process 0, which writes the metrics.

  --worker W           all, N, N-M or N,M,...     [default 0]
  --lines N            lines to show              [default 100]
  --follow             keep printing (tail -F) until Ctrl-C
  --run RUN            that run's log instead of the latest (train.sh --run, e.g. pretrain)
  --fetch DIR          copy $LOG_DIR/*.log of every worker into DIR (one file per
                       worker: RUN.HOSTNAME.log) instead of printing
  --name NAME  --zone ZONE  --project PROJECT      (as create.sh; env SGV_*)
  --dry-run            print the commands, run nothing
  -h, --help
EOF
}

WORKER=0 LINES=100 FOLLOW=0 RUN_NAME="" FETCH=""
VALUE_FLAGS+=([--worker]=WORKER [--lines]=LINES [--run]=RUN_NAME [--fetch]=FETCH)
BOOL_FLAGS+=([--follow]=FOLLOW)
parse_args "$@"
check_worker "$WORKER"
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines '$LINES': give a number"
[[ $RUN_NAME =~ ^[A-Za-z0-9_.-]*$ ]] || die "--run '$RUN_NAME': use letters, digits, _ . -"

if [[ -n $FETCH ]]; then
  loc_flags
  run mkdir -p "$FETCH"
  # Worker log names differ by hostname, so all workers can land in one directory. scp takes
  # remote paths relative to the home directory, which avoids relying on its `~` handling.
  run gcloud compute tpus tpu-vm scp "$TPU_NAME:${LOG_DIR#\~/}/*.log" "$FETCH" "${LOC[@]}" --worker=all
  exit 0
fi

LOG=$LOG_DIR/latest
if [[ -n $RUN_NAME ]]; then LOG="$LOG_DIR/$RUN_NAME.\$(hostname).log"; fi
TAIL="tail -n $LINES"
if [[ $FOLLOW == 1 ]]; then TAIL+=" -F"; fi
# With several workers, prefix each line with its host so interleaved output stays readable.
if [[ $WORKER =~ ^[0-9]+$ ]]; then
  on_workers "$WORKER" "$TAIL $LOG"
else
  on_workers "$WORKER" "$TAIL $LOG | sed -u \"s/^/\$(hostname): /\""
fi
