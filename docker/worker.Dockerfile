# syntax=docker/dockerfile:1
#
# llmq-worker image: the worker with both backends (CPU always, CUDA from
# `make cuda`), on NVIDIA's CUDA runtime image, which carries cuBLAS and NCCL.
# It also holds the `llmq` CLI and two helper scripts:
#   llmq-fetch-model   the model download init container (curl + jq)
#   llmq-worker-ranks  starts a pod's share of the ranks of a multi-node group
# and stunnel4, the chart's TLS proxy sidecar for a rediss:// Redis.
#
#   docker build -f docker/worker.Dockerfile -t llmq/worker:0.1.0 .
#   docker build -f docker/worker.Dockerfile --build-arg CUDA_ARCHS="75 86" ...
#
# NVIDIA publishes its CUDA images on Ubuntu (and UBI/Rocky), not on Debian;
# Ubuntu 22.04 carries the same library packages llmq builds against in
# Debian bookworm, under the same names.

ARG CUDA_VERSION=12.4.1
ARG UBUNTU_RELEASE=22.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_RELEASE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential pkg-config ca-certificates \
      libhiredis-dev libev-dev libmsgpack-dev libhttp-parser-dev libjansson-dev \
      libpcre2-dev libxxhash-dev libutf8proc-dev libcmocka-dev \
      libnccl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG ARCH=x86-64-v2
# GPU architectures compiled into the kernels (cuda.mk's CUDA_ARCHS): T4 (75),
# A100 (80), A10G (86), L4 (89), H100 (90).
ARG CUDA_ARCHS="75 80 86 89 90"
# IMAGE_CUDA=0 builds a CPU-only worker (same image, no GPU kernels), e.g. for
# the chart's default CPU group.
ARG IMAGE_CUDA=1
# `make cuda` builds into its own folder (CUDA_BUILD) and replaces the CPU
# build of llmq and llmq-worker with the CUDA-enabled ones.
RUN make -j"$(nproc)" ARCH="${ARCH}" BUILD=/out /out/llmq /out/llmq-worker \
 && if [ "${IMAGE_CUDA}" = 1 ]; then \
      make -j"$(nproc)" cuda CUDA_BUILD=/out-cuda CUDA_ARCHS="${CUDA_ARCHS}" CUDA_HOST_ARCH="${ARCH}" \
      && cp /out-cuda/llmq /out-cuda/llmq-worker /out/; \
    fi \
 && test -x /out/llmq-worker \
 && strip /out/llmq-worker /out/llmq
# Structured output: llguidance's C API is the shared library inside its
# PyPI wheel (abi3); the worker dlopens it (LLMQ_LLGUIDANCE below) after the
# runtime's libpython3.10.  Only that file is kept, not Python packages.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pip \
 && pip3 download --no-deps --only-binary=:all: -d /tmp/llg llguidance \
 && python3 -m zipfile -e /tmp/llg/llguidance-*.whl /tmp/llg/x \
 && mkdir -p /out/llguidance && cp /tmp/llg/x/llguidance/_lib*.so /out/llguidance/

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_RELEASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libhiredis0.14 libmsgpackc2 libjansson4 \
      libpcre2-8-0 libxxhash0 libutf8proc2 libgomp1 \
      tini curl jq ca-certificates stunnel4 libpython3.10 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --gid 0 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin llmq
COPY --from=build /out/llmq-worker /out/llmq /usr/local/bin/
COPY --from=build /out/llguidance /usr/local/lib/llmq/llguidance
ENV LLMQ_LLGUIDANCE=/usr/local/lib/llmq/llguidance
COPY --chmod=0755 docker/fetch-model.sh /usr/local/bin/llmq-fetch-model
COPY --chmod=0755 docker/worker-ranks.sh /usr/local/bin/llmq-worker-ranks
# HOME and the CUDA JIT cache on the /tmp emptyDir: the root filesystem is
# read-only in the chart.
ENV HOME=/tmp CUDA_CACHE_PATH=/tmp/cuda-cache NCCL_DEBUG=WARN
USER 10001
EXPOSE 9090
# tini forwards SIGTERM to the worker, which drains (finishes in-flight jobs,
# stops pulling) before it exits.
ENTRYPOINT ["/usr/bin/tini", "--", "llmq-worker"]
