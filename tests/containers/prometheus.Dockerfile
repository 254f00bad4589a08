# Prometheus for tests/containers, where no registry serves prom/prometheus: Debian's build (2.42, the same
# promtool the other deploy tests use) on the local Debian base, laid out like the official image.
ARG BASE_IMAGE=localhost/debian:bookworm
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
