#!/usr/bin/env bash
# Ship this checkout (tracked files, as they are in the working tree) to every worker.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT [flags]

Tar the files \`git ls-files\` lists (uncommitted edits included, untracked files not) and
unpack them into $CODE_DIR [SGV_CODE_DIR] on every worker. Files already there that the
tarball lacks (data/, downloaded models) are kept. To fetch a git ref instead: pull.sh.

  --name NAME  --zone ZONE  --project PROJECT      (as create.sh; env SGV_*)
  --tarball PATH       where to build it          [default /tmp/sgv-code.\$USER.tgz]
  --dry-run            print the commands, run nothing
  -h, --help
EOF
}

TARBALL=/tmp/sgv-code.${USER:-$(id -u)}.tgz
VALUE_FLAGS+=([--tarball]=TARBALL)
parse_args "$@"
loc_flags

# A pipeline, so run() cannot take it: print it, then run the same words.
# --ignore-failed-read: a tracked file deleted in the working tree is skipped, not fatal.
quote_all git -C "$REPO_ROOT" ls-files -z
printf ' | '
quote_all tar -C "$REPO_ROOT" --null --ignore-failed-read -czf "$TARBALL" -T -
echo
if [[ $DRY_RUN != 1 ]]; then
  git -C "$REPO_ROOT" ls-files -z | tar -C "$REPO_ROOT" --null --ignore-failed-read -czf "$TARBALL" -T -
fi
run gcloud compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME:sgv-code.tgz" "${LOC[@]}" --worker=all
on_workers all "set -euo pipefail
mkdir -p $CODE_DIR
tar -xzf sgv-code.tgz -C $CODE_DIR
echo \"\$(hostname): code in $CODE_DIR\""
