# The llmscratch serving container for SageMaker real-time endpoints (and any Docker host).
#
#   docker build -t llmscratch .                                  # torch CPU (default)
#   docker build -t llmscratch-cuda \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# SageMaker runs `docker run IMAGE serve` with the model unpacked in /opt/ml/model; the entrypoint checks it
# against its manifest and execs `llmscratch serve` on 0.0.0.0:${SAGEMAKER_BIND_TO_PORT:-8080}.
# Try it locally: docs/deploy.md.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
LABEL org.opencontainers.image.title="llmscratch" \
      org.opencontainers.image.description="llmscratch serve: SageMaker /ping + /invocations, OpenAI /v1 routes"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LLMSCRATCH_MODEL_DIR=/opt/ml/model \
    LLMSCRATCH_CACHE=/tmp/llmscratch-cache \
    OMP_WAIT_POLICY=PASSIVE

# A CUDA base image has no Python: install it there (the slim Python image already has it).
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

# torch first, from the chosen index (CPU wheels by default), so installing the package keeps it.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /opt/llmscratch
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install -c constraints.txt . \
    && install -m 0755 src/llmscratch/deploy/entrypoint.sh /usr/local/bin/llmscratch-entrypoint \
    && rm -rf /opt/llmscratch/src

# Not root at run time. The model folder is only read; the cache goes to /tmp.
RUN useradd --create-home llmscratch && mkdir -p /opt/ml/model
USER llmscratch
WORKDIR /home/llmscratch

EXPOSE 8080
# Exec form: the entrypoint is PID 1 and execs the server, so SIGTERM (docker stop, SageMaker) reaches it.
ENTRYPOINT ["/usr/local/bin/llmscratch-entrypoint"]
CMD ["serve"]
