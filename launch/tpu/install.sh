#!/usr/bin/env bash
# Install the project's Python stack on every worker of the slice.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT [flags]

On every worker: a virtualenv at $VENV_DIR [SGV_VENV_DIR] with this checkout's
requirements.txt plus jax[tpu] at the same version as its jax pin. Run it again after
requirements.txt changes. Needs no code on the workers (it uploads requirements.txt).

  --name NAME  --zone ZONE  --project PROJECT      (as create.sh; env SGV_*)
  --python VERSION     Python for the venv        [SGV_PYTHON, default 3.11; jax needs >= 3.11
                       and the TPU images ship 3.10, so uv fetches a managed Python]
  --dry-run            print the commands, run nothing
  -h, --help
EOF
}

PYTHON=${SGV_PYTHON:-3.11}
VALUE_FLAGS+=([--python]=PYTHON)
parse_args "$@"
[[ $PYTHON =~ ^3\.[0-9]+$ ]] || die "--python '$PYTHON': give a version like 3.11"

REQ=$REPO_ROOT/requirements.txt
# TPU wheels must match the CPU/GPU pin exactly, so read it instead of repeating it here.
JAX_VERSION=$(sed -n 's/^jax==\([0-9][0-9.]*\).*/\1/p' "$REQ")
[[ -n $JAX_VERSION ]] || die "no 'jax==X' pin in $REQ"
loc_flags

run gcloud compute tpus tpu-vm scp "$REQ" "$TPU_NAME:sgv-requirements.txt" "${LOC[@]}" --worker=all
# uv: installs a Python >= 3.11 without root and resolves the stack much faster than pip.
# Ubuntu 24.04 images mark the system Python externally managed, hence the second try.
on_workers all "set -euo pipefail
python3 -m pip install --user -q uv || python3 -m pip install --user -q --break-system-packages uv
~/.local/bin/uv venv -q --allow-existing --python $PYTHON $VENV_DIR
~/.local/bin/uv pip install -q --python $VENV_DIR/bin/python -r sgv-requirements.txt 'jax[tpu]==$JAX_VERSION'
mkdir -p $LOG_DIR
echo \"\$(hostname): \$($VENV_DIR/bin/python -c 'import jax; print(\"jax\", jax.__version__)')\""
