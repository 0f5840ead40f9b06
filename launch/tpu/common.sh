# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables set here are read by the scripts that source this file
#
# Shared by every launch/tpu/*.sh script: settings from env with defaults, flag parsing,
# quoting, and the one place commands are run (so --dry-run covers every command).

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  # Associative arrays and empty "${a[@]}" under `set -u` need bash >= 4.4 (macOS: brew bash).
  echo "error: bash >= 4.4 is needed (this is $BASH_VERSION)" >&2
  exit 2
fi

SCRIPT=$(basename "$0")
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# --- settings: env first, flags override (parse_args) --------------------------------------
TPU_NAME=${SGV_TPU_NAME:-sgv-tpu}
ZONE=${SGV_ZONE:-us-central2-b}            # where v4 lives; v5p: us-east5-a
PROJECT=${SGV_PROJECT:-}                   # empty: gcloud's configured project
ACCELERATOR=${SGV_ACCELERATOR:-v4-8}
RUNTIME=${SGV_RUNTIME:-}                   # empty: derived from ACCELERATOR (default_runtime)
BUCKET=${SGV_BUCKET:-}
DRY_RUN=${SGV_DRY_RUN:-0}
# Paths on the workers, kept as text: the remote shell expands their `~`, not this one.
# shellcheck disable=SC2088
CODE_DIR=${SGV_CODE_DIR:-'~/sgv-jax'}
# shellcheck disable=SC2088
VENV_DIR=${SGV_VENV_DIR:-'~/sgv-venv'}
# shellcheck disable=SC2088
LOG_DIR=${SGV_LOG_DIR:-'~/sgv-logs'}

# Flag tables; each script adds its own entries before calling parse_args.
declare -A VALUE_FLAGS=([--name]=TPU_NAME [--zone]=ZONE [--project]=PROJECT)
declare -A BOOL_FLAGS=([--dry-run]=DRY_RUN)
PASSTHROUGH_PREFIX=""   # e.g. "--config." in train.sh: such words go to EXTRA_ARGS
EXTRA_ARGS=()

die() {
  echo "$SCRIPT: error: $*" >&2
  exit 2
}

note() { echo "$SCRIPT: $*" >&2; }   # stderr, so --dry-run's stdout is only commands

# parse_args "$@": fills the variables named in VALUE_FLAGS/BOOL_FLAGS; words after `--`
# (and words starting with PASSTHROUGH_PREFIX) land in EXTRA_ARGS. Needs a `usage` function.
parse_args() {
  while (($# > 0)); do
    # --flag=value -> --flag value (not for --config.x=y, which is a passthrough word)
    if [[ $1 =~ ^(--[a-z][a-z0-9-]*)=(.*)$ ]]; then
      set -- "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "${@:2}"
    fi
    case $1 in
      -h | --help)
        usage
        exit 0
        ;;
      --)
        shift
        EXTRA_ARGS+=("$@")
        break
        ;;
    esac
    if [[ -v "VALUE_FLAGS[$1]" ]]; then
      if (($# < 2)) || [[ -z $2 || $2 == --* ]]; then
        die "$1 needs a value (see $SCRIPT --help)"
      fi
      printf -v "${VALUE_FLAGS[$1]}" '%s' "$2"
      shift 2
    elif [[ -v "BOOL_FLAGS[$1]" ]]; then
      printf -v "${BOOL_FLAGS[$1]}" '%s' 1
      shift
    elif [[ -n $PASSTHROUGH_PREFIX && $1 == "$PASSTHROUGH_PREFIX"* ]]; then
      EXTRA_ARGS+=("$1")
      shift
    else
      die "unknown flag: $1 (see $SCRIPT --help)"
    fi
  done
  check_remote_path SGV_CODE_DIR "$CODE_DIR"
  check_remote_path SGV_VENV_DIR "$VENV_DIR"
  check_remote_path SGV_LOG_DIR "$LOG_DIR"
}

# Remote paths are pasted unquoted into remote commands (so `~` expands there): allow only
# characters that need no quoting.
check_remote_path() {
  [[ $2 =~ ^~?[A-Za-z0-9_./-]+$ ]] || die "$1='$2': use only letters, digits, _ . / - (and a leading ~)"
}

check_worker() {
  [[ $1 =~ ^(all|[0-9]+([,-][0-9]+)*)$ ]] || die "--worker '$1': use all, N, N-M or N,M,..."
}

# The runtime image that matches an accelerator family (cloud.google.com/tpu/docs/runtimes).
default_runtime() {
  case $1 in
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    *) die "no default runtime for accelerator '$1': pass --runtime or set SGV_RUNTIME" ;;
  esac
}

# quote WORD: the word as a shell would need it typed. Plain words stay bare; --flag=value
# keeps the flag bare and quotes the value, which keeps printed commands readable.
quote() {
  local w=$1 prefix=""
  if [[ $w =~ ^(--[a-z][a-z0-9-]*=)(.*)$ ]]; then
    prefix=${BASH_REMATCH[1]}
    w=${BASH_REMATCH[2]}
  fi
  if [[ $w =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s%s' "$prefix" "$w"
  else
    printf "%s'%s'" "$prefix" "${w//\'/\'\\\'\'}"
  fi
}

# quote_all WORDS...: the words quoted and joined by spaces (a copy-pastable command line).
quote_all() {
  local out="" w
  for w in "$@"; do out+="${out:+ }$(quote "$w")"; done
  printf '%s' "$out"
}

# run CMD...: print the command (quoted) to stdout; run it unless --dry-run.
run() {
  quote_all "$@"
  echo
  if [[ $DRY_RUN != 1 ]]; then "$@"; fi
}

# The flags every `gcloud compute tpus` call needs to find the slice.
loc_flags() {
  LOC=("--zone=$ZONE")
  if [[ -n $PROJECT ]]; then LOC+=("--project=$PROJECT"); fi
}

# on_workers WORKER SCRIPT: run a bash snippet on the given worker(s), concurrently on all.
on_workers() {
  loc_flags
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${LOC[@]}" "--worker=$1" "--command=$2"
}
