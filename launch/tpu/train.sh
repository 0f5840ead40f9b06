#!/usr/bin/env bash
# Start one training config on every worker, in the background, one log per worker.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT --config FILE[:variant] [--workdir DIR] [--config.KEY=VALUE ...] [flags] [-- ARGS]

On every worker (a pod runs the same command everywhere; jax.distributed finds its peers):
  cd $CODE_DIR && nohup $VENV_DIR/bin/python launch/train.py --config FILE --workdir DIR ...
      > $LOG_DIR/RUN.\$(hostname).log
with $LOG_DIR/latest pointing at that log and the pid in $LOG_DIR/train.pid.
Refuses to start where a run is still alive (stop.sh). The same workdir resumes.

  --config FILE        e.g. configs/pretrain.py, configs/finetune.py (required)
  --workdir DIR        checkpoints + metrics; on a pod it must be shared, i.e. gs://...
                       [default gs://\$SGV_BUCKET/sgv-runs/RUN when SGV_BUCKET/--bucket is set]
  --bucket NAME        GCS bucket for the default workdir   [SGV_BUCKET]
  --run RUN            names the log files and default workdir [default: config file stem]
  --config.KEY=VALUE   config overrides, passed on (so are words after --)
  --name NAME  --zone ZONE  --project PROJECT      (as create.sh; env SGV_*)
  --dry-run            print the commands, run nothing
  -h, --help
EOF
}

CONFIG="" WORKDIR="" RUN_NAME=""
VALUE_FLAGS+=([--config]=CONFIG [--workdir]=WORKDIR [--bucket]=BUCKET [--run]=RUN_NAME)
PASSTHROUGH_PREFIX=--config.
parse_args "$@"

[[ -n $CONFIG ]] || die "--config is required (e.g. --config configs/pretrain.py)"
# The workers run the same tree as this checkout (copy.sh/pull.sh): catch typos here.
[[ -f $REPO_ROOT/${CONFIG%%:*} ]] || die "--config: no file ${CONFIG%%:*} in $REPO_ROOT"
if [[ -z $RUN_NAME ]]; then
  RUN_NAME=$(basename "${CONFIG%%:*}" .py)
  if [[ $CONFIG == *:* ]]; then RUN_NAME+=-${CONFIG#*:}; fi
fi
[[ $RUN_NAME =~ ^[A-Za-z0-9_.-]+$ ]] || die "--run '$RUN_NAME': use letters, digits, _ . -"
if [[ -z $WORKDIR ]]; then
  [[ -n $BUCKET ]] || die "--workdir is required (or set --bucket/SGV_BUCKET for gs://BUCKET/sgv-runs/$RUN_NAME)"
  WORKDIR=gs://${BUCKET#gs://}/sgv-runs/$RUN_NAME
fi
if [[ $WORKDIR != gs://* ]]; then
  note "warning: workdir $WORKDIR is local to each worker; a pod slice needs a shared gs:// one"
fi

LOG="$LOG_DIR/$RUN_NAME.\$(hostname).log"
PIDFILE=$LOG_DIR/train.pid
# The venv path stays unquoted so that `~` expands on the worker; user text is quoted.
TRAIN="$VENV_DIR/bin/python $(quote_all launch/train.py --config "$CONFIG" --workdir "$WORKDIR" \
  "${EXTRA_ARGS[@]}")"

# nohup + all three streams redirected: the run outlives the ssh session that starts it.
on_workers all "set -euo pipefail
mkdir -p $LOG_DIR
if [ -f $PIDFILE ] && kill -0 \"\$(cat $PIDFILE)\" 2>/dev/null; then
  echo \"\$(hostname): a run is alive (pid \$(cat $PIDFILE)); stop.sh first\" >&2; exit 1
fi
cd $CODE_DIR
nohup $TRAIN > $LOG 2>&1 < /dev/null &
echo \$! > $PIDFILE
ln -sfn $LOG $LOG_DIR/latest
echo \"\$(hostname): started pid \$!, log $LOG\""
