#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice (one process per host).
#
# Usage: launch/tpu_pod.sh [--dry-run] TPU_NAME ZONE CONFIG WORKDIR \
#            [--config.key=value ...]
#
#   TPU_NAME, ZONE  the TPU VM (gcloud compute tpus tpu-vm list --zone ZONE).
#   CONFIG    experiment config file, relative to the repository checkout on
#             the workers (MHE_REMOTE_DIR, default ~/mhe_jax).
#   WORKDIR   an absolute path on a filesystem all workers share (NFS,
#             Filestore, a gcsfuse-mounted bucket): orbax writes each host's
#             shards of a checkpoint there, process 0 writes metrics and
#             results.json. gs:// URLs are not supported by the trainer.
#   Further arguments go to mhe_jax.main unchanged.
#   --dry-run  print the gcloud command instead of running it.
#
# Runs, on all workers at once:
#   gcloud compute tpus tpu-vm ssh TPU_NAME --zone ZONE --worker=all \
#       --command "cd REMOTE_DIR && MHE_JAX_DISTRIBUTED=1 python -m mhe_jax.main ..."
# On a TPU VM JAX detects the pod from the VM metadata (coordinator = worker
# 0, process = worker number, all local chips), so MHE_JAX_DISTRIBUTED=1 is
# the whole contract. The workers must already hold the code and an
# environment with jax[tpu] and mhe_jax installed; this script installs
# nothing. Environment: MHE_REMOTE_DIR (default ~/mhe_jax), PYTHON (the
# workers' interpreter, default python3), TPU_PROJECT (gcloud --project, if
# not the default project). Hyper-parameters belong in CONFIG.
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
if [[ $# -lt 4 ]]; then
  usage
fi
for arg in "$1" "$2" "$3" "$4"; do
  [[ "$arg" == -* ]] && usage
done
tpu_name="$1"
zone="$2"
config="$3"
workdir="$4"
shift 4
case "$workdir" in
  gs://*)
    echo "tpu_pod.sh: WORKDIR=$workdir: the trainer writes through the local" \
         "filesystem; mount the bucket (gcsfuse) and pass its path" >&2
    exit 2 ;;
  /*) ;;
  *)
    echo "tpu_pod.sh: WORKDIR must be an absolute path on a filesystem all" \
         "workers share, got $workdir" >&2
    exit 2 ;;
esac

remote_dir="${MHE_REMOTE_DIR:-~/mhe_jax}"
main_cmd=("${PYTHON:-python3}" -m mhe_jax.main "--config=${config}"
          "--workdir=${workdir}" "$@")
main_quoted=$(printf '%q ' "${main_cmd[@]}")
# The remote dir may start with ~, which the remote shell must expand.
if [[ "$remote_dir" == "~/"* ]]; then
  cd_target="~/$(printf '%q' "${remote_dir#\~/}")"
else
  cd_target=$(printf '%q' "$remote_dir")
fi
remote="cd ${cd_target} && MHE_JAX_DISTRIBUTED=1 ${main_quoted% }"

gcloud_cmd=(gcloud compute tpus tpu-vm ssh "$tpu_name" --zone "$zone"
            --worker=all)
if [[ -n "${TPU_PROJECT:-}" ]]; then
  gcloud_cmd+=(--project "$TPU_PROJECT")
fi
gcloud_cmd+=(--command "$remote")

if (( dry_run )); then
  quoted=$(printf '%q ' "${gcloud_cmd[@]}")
  echo "${quoted% }"
  exit 0
fi
if ! command -v gcloud > /dev/null; then
  echo "tpu_pod.sh: gcloud not found (install the Google Cloud CLI)" >&2
  exit 2
fi
exec "${gcloud_cmd[@]}"
