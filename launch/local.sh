#!/usr/bin/env bash
# Train on this machine: one process, all of its local devices.
#
# Usage: launch/local.sh [--dry-run] CONFIG WORKDIR [--config.key=value ...]
#
#   CONFIG   experiment config file, e.g. configs/default.py (or
#            configs/default.py:runlocal); paths are relative to the current
#            directory.
#   WORKDIR  checkpoints, metrics and results.json; an existing run there is
#            resumed from its newest checkpoint.
#   Further arguments go to mhe_jax.main unchanged (config overrides, absl
#   flags). --dry-run prints the command instead of running it.
#
# Environment: PYTHON (default: python) is the interpreter of an environment
# with mhe_jax installed; this script installs nothing and sets nothing but
# the command line. Set JAX_PLATFORMS=cpu to keep off an accelerator.
set -euo pipefail

usage() {  # The comment block at the top of this file.
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit "${1:-2}"
}

[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && usage 0
dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=1
  shift
fi
if [[ $# -lt 2 || "$1" == -* || "$2" == -* ]]; then
  usage
fi
config="$1"
workdir="$2"
shift 2
if [[ ! -f "${config%%:*}" ]]; then
  echo "local.sh: config file not found: ${config%%:*}" >&2
  exit 2
fi

cmd=("${PYTHON:-python}" -m mhe_jax.main "--config=${config}"
     "--workdir=${workdir}" "$@")
if (( dry_run )); then
  quoted=$(printf '%q ' "${cmd[@]}")
  echo "${quoted% }"
  exit 0
fi
exec "${cmd[@]}"
