#!/usr/bin/env bash
# Stop the run train.sh started, on every worker (the slice keeps running).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT [--wait SECONDS] [flags]

Send SIGTERM to the pid in $LOG_DIR/train.pid on every worker, then SIGKILL if it is
still alive after --wait seconds. Only that pid is signalled. A pod run must be stopped on
all workers: one dead worker leaves the others hanging in collectives.

  --wait SECONDS       grace period before SIGKILL [default 30]
  --name NAME  --zone ZONE  --project PROJECT      (as create.sh; env SGV_*)
  --dry-run            print the commands, run nothing
  -h, --help
EOF
}

WAIT=30
VALUE_FLAGS+=([--wait]=WAIT)
parse_args "$@"
[[ $WAIT =~ ^[0-9]+$ ]] || die "--wait '$WAIT': give a number of seconds"

on_workers all "pid=\$(cat $LOG_DIR/train.pid 2>/dev/null || true)
if [ -z \"\$pid\" ] || ! kill -0 \"\$pid\" 2>/dev/null; then echo \"\$(hostname): no run alive\"; exit 0; fi
kill -TERM \"\$pid\"
for _ in \$(seq $WAIT); do kill -0 \"\$pid\" 2>/dev/null || break; sleep 1; done
if kill -0 \"\$pid\" 2>/dev/null; then kill -KILL \"\$pid\"; echo \"\$(hostname): killed \$pid\"; else echo \"\$(hostname): stopped \$pid\"; fi"
