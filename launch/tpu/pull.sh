#!/usr/bin/env bash
# Check out a git ref of the project on every worker (the alternative to copy.sh).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT --repo URL [--ref REF] [flags]

Clone URL into $CODE_DIR [SGV_CODE_DIR] on every worker (once), then fetch REF and check
it out, so every worker runs the same commit. The workers need access to URL.

  --repo URL           git URL                    [SGV_REPO, required]
  --ref REF            branch, tag or commit      [SGV_REF, default main]
  --name NAME  --zone ZONE  --project PROJECT      (as create.sh; env SGV_*)
  --dry-run            print the commands, run nothing
  -h, --help
EOF
}

REPO=${SGV_REPO:-}
REF=${SGV_REF:-main}
VALUE_FLAGS+=([--repo]=REPO [--ref]=REF)
parse_args "$@"
[[ -n $REPO ]] || die "--repo is required (or set SGV_REPO)"

# Quoted for the remote shell: URLs and refs are user text.
q_repo=$(quote "$REPO")
q_ref=$(quote "$REF")
on_workers all "set -euo pipefail
if [ -e $CODE_DIR ] && [ ! -d $CODE_DIR/.git ]; then
  echo \"\$(hostname): $CODE_DIR exists and is not a git checkout (from copy.sh?); remove it first\" >&2; exit 1
fi
if [ ! -d $CODE_DIR ]; then git clone -q $q_repo $CODE_DIR; fi
git -C $CODE_DIR fetch -q origin $q_ref
git -C $CODE_DIR checkout -q --force FETCH_HEAD
echo \"\$(hostname): \$(git -C $CODE_DIR log -1 --oneline)\""
