# syntax=docker/dockerfile:1
# The allxai trainer on a GPU: `docker build -f deploy/docker/trainer.Dockerfile -t allxai/trainer:0.1.0 .`
# Based on TensorFlow's own GPU image (CUDA and cuDNN matching TensorFlow 2.21), so pip keeps its
# TensorFlow and adds only allxai[train]. Run with the data and an output volume mounted, e.g.
#   docker run --gpus all -v $PWD/data:/data:ro -v $PWD/out:/out allxai/trainer:0.1.0 \
#     train --config configs/paper2-allnet.toml --set data=/data/aria-all/Original --set out=/out/models
# A one-shot job, not a service: no HEALTHCHECK.
FROM tensorflow/tensorflow:2.21.0-gpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/allxai
COPY pyproject.toml README.md ./
COPY proto proto
COPY clients clients
COPY server server
COPY trainer trainer
COPY explainer explainer
COPY configs configs
RUN python -m pip install ".[train]" \
    && groupadd --system --gid 10001 allxai \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/allxai \
       --shell /usr/sbin/nologin allxai
# Keras caches downloaded ImageNet weights under $HOME/.keras.
ENV HOME=/home/allxai
USER 10001:10001
ENTRYPOINT ["allxai"]
CMD ["train", "--help"]
