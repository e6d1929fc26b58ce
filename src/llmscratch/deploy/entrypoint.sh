#!/bin/sh
# The container's ENTRYPOINT (exec form). SageMaker starts the container as `docker run IMAGE serve`:
#   1. check the unpacked model.tar.gz in $LLMSCRATCH_MODEL_DIR (default /opt/ml/model) against its manifest
#      (a corrupted or incomplete archive stops here, with the reason in the logs);
#   2. exec `llmscratch serve` on ${LLMSCRATCH_HOST:-0.0.0.0}:${SAGEMAKER_BIND_TO_PORT:-8080} with the archive's
#      model and serving.json settings. exec: the server becomes this process, so SIGTERM reaches it directly.
# Any other command (`docker run IMAGE bash`, `docker run IMAGE llmscratch --help`) runs as given.
set -eu

if [ "$#" -gt 0 ] && [ "$1" != "serve" ]; then
    exec "$@"
fi
[ "$#" -gt 0 ] && shift  # extra arguments after `serve` go to `llmscratch serve`

MODEL_DIR="${LLMSCRATCH_MODEL_DIR:-/opt/ml/model}"
PORT="${SAGEMAKER_BIND_TO_PORT:-8080}"
HOST="${LLMSCRATCH_HOST:-0.0.0.0}"  # every interface of the container; tests outside Docker use 127.0.0.1

# `llmscratch deploy verify --serve-args`, through the light entry point that does not import torch: one argument
# per line (--model PATH --max-batch N ...), split below on newlines only, without globbing.
ARGS=$(python3 -m llmscratch.deploy verify --serve-args "$MODEL_DIR")
OLD_IFS=$IFS
IFS='
'
set -f
# shellcheck disable=SC2086
set -- $ARGS "$@"
set +f
IFS=$OLD_IFS

echo "llmscratch entrypoint: $MODEL_DIR verified, serving on $HOST:$PORT" >&2
exec llmscratch serve "$@" --host "$HOST" --port "$PORT"
