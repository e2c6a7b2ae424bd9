# syntax=docker/dockerfile:1
#
# llmq-gateway image: Debian bookworm, built with the project's Makefile,
# shipped on bookworm-slim with only the shared libraries it links.
#
#   docker build -f docker/gateway.Dockerfile -t llmq/gateway:0.1.0 .
#
# stunnel4 is the chart's TLS proxy to a rediss:// Redis (the gateway speaks
# plain Redis: Debian's hiredis has no TLS); the chart runs it from this image.
#
# The image runs as UID 10001 (numeric, so that Kubernetes can check
# runAsNonRoot) and writes nothing outside /tmp; on OpenShift any UID the SCC
# assigns works the same.

ARG DEBIAN_RELEASE=bookworm

FROM debian:${DEBIAN_RELEASE} AS build
# Build dependencies: the same Debian packages as `make deps` (DESIGN.md §7).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential pkg-config ca-certificates \
      libhiredis-dev libev-dev libmsgpack-dev libhttp-parser-dev libjansson-dev \
      libpcre2-dev libxxhash-dev libutf8proc-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# ARCH: a portable x86-64 level instead of the build machine's -march=native.
ARG ARCH=x86-64-v2
RUN make -j"$(nproc)" ARCH="${ARCH}" BUILD=/out /out/llmq-gateway \
 && strip /out/llmq-gateway

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libhiredis0.14 libev4 libmsgpackc2 libhttp-parser2.9 libjansson4 libgomp1 libssl3 \
      tini ca-certificates stunnel4 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --gid 0 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin llmq
COPY --from=build /out/llmq-gateway /usr/local/bin/llmq-gateway
USER 10001
EXPOSE 8080
# tini reaps and forwards SIGTERM: the gateway shuts down gracefully on it.
ENTRYPOINT ["/usr/bin/tini", "--", "llmq-gateway"]
CMD ["--redis", "redis://redis:6379/0", "--listen", "0.0.0.0:8080"]
