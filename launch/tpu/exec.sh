#!/usr/bin/env bash
# Run one command in the project's directory and venv on workers, in the foreground.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT [--worker all|N|N-M|N,M] [flags] -- COMMAND [ARGS...]

Run COMMAND in $CODE_DIR with $VENV_DIR/bin first on PATH, e.g. downloading and
converting weights, or copying data from GCS. For training use train.sh (background, logs).

  --worker W           all, N, N-M or N,M,...     [default all]
  --name NAME  --zone ZONE  --project PROJECT      (as create.sh; env SGV_*)
  --dry-run            print the commands, run nothing
  -h, --help
EOF
}

WORKER=all
VALUE_FLAGS+=([--worker]=WORKER)
parse_args "$@"
check_worker "$WORKER"
((${#EXTRA_ARGS[@]} > 0)) || die "no command: put it after -- (see $SCRIPT --help)"

on_workers "$WORKER" "set -euo pipefail
cd $CODE_DIR
export PATH=$VENV_DIR/bin:\$PATH
$(quote_all "${EXTRA_ARGS[@]}")"
