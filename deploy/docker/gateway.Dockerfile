# syntax=docker/dockerfile:1
# The allxai gateway: `docker build -f deploy/docker/gateway.Dockerfile -t allxai/gateway:0.1.0 .`
# (context: the repository root). Two stages: the build stage installs allxai[server] into a virtualenv,
# the runtime stage copies only that virtualenv onto a fresh slim image, with no compiler, pip cache or
# sources, and runs it as a non-root numeric user. No HEALTHCHECK: Kubernetes probes the gateway's gRPC
# health port; deploy/compose.yaml has its own check.
# The base is pinned to a Python patch release and a Debian release (both stages the same, so the
# virtualenv's interpreter is the runtime's); at release pin its digest too
# (python:3.11.13-slim-bookworm@sha256:...), and bump the tag for Python and Debian security fixes.
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/allxai
WORKDIR /src
# Only what the package needs (see .dockerignore); the source roots of the allxai namespace.
COPY pyproject.toml README.md ./
COPY proto proto
COPY clients clients
COPY server server
COPY trainer trainer
COPY explainer explainer
RUN /opt/allxai/bin/pip install ".[server]"

FROM python:3.11.13-slim-bookworm
RUN groupadd --system --gid 10001 allxai \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin allxai
COPY --from=build /opt/allxai /opt/allxai
# The root filesystem is read-only in Kubernetes: no bytecode writes, matplotlib's cache under /tmp
# (an emptyDir there), TensorFlow's info logs off.
ENV PATH=/opt/allxai/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TQDM_DISABLE=1
USER 10001:10001
# gRPC (TLS when configured), the plaintext health-only port, Prometheus metrics.
EXPOSE 50051 8081 9090
ENTRYPOINT ["python", "-m", "allxai.server"]
