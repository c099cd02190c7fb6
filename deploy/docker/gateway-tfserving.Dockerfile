# syntax=docker/dockerfile:1
# The allxai gateway for the tfserving backend only, without TensorFlow:
#   docker build -f deploy/docker/gateway-tfserving.Dockerfile -t allxai/gateway-tfserving:0.1.0 .
# (context: the repository root). It talks to TensorFlow Serving with the messages generated into
# allxai.tfs_protos and converts tensors with numpy (allxai.server.backends.tfserving_tensors), so it
# installs the server extra less tensorflow and tensorflow-serving-api: deploy/README.md has the sizes.
# It cannot run the embedded backend (ALLXAI_BACKEND=embedded needs TensorFlow: use gateway.Dockerfile).
# Otherwise the same as gateway.Dockerfile: two stages, pinned base, non-root numeric user.
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/allxai
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto proto
COPY clients clients
COPY server server
COPY trainer trainer
COPY explainer explainer
# The requirements of allxai and its server extra, read from pyproject.toml, less TensorFlow's two
# packages; then allxai itself without resolving its dependencies again (which would pull TensorFlow).
RUN python - > /tmp/requirements.txt <<'PY'
import re
import tomllib

with open("pyproject.toml", "rb") as file:
    project = tomllib.load(file)["project"]
without = {"tensorflow", "tensorflow-serving-api"}
for requirement in project["dependencies"] + project["optional-dependencies"]["server"]:
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    if re.sub(r"[-_.]+", "-", name).lower() not in without:
        print(requirement)
PY
RUN /opt/allxai/bin/pip install -r /tmp/requirements.txt \
    && /opt/allxai/bin/pip install --no-deps . \
    && /opt/allxai/bin/pip check

FROM python:3.11.13-slim-bookworm
RUN groupadd --system --gid 10001 allxai \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin allxai
COPY --from=build /opt/allxai /opt/allxai
# The root filesystem is read-only in Kubernetes: no bytecode writes, matplotlib's cache under /tmp.
# The backend is fixed: this image has no TensorFlow for the embedded one.
ENV PATH=/opt/allxai/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    TQDM_DISABLE=1 \
    ALLXAI_BACKEND=tfserving
USER 10001:10001
# gRPC (TLS when configured), the plaintext health-only port, Prometheus metrics.
EXPOSE 50051 8081 9090
ENTRYPOINT ["python", "-m", "allxai.server"]
