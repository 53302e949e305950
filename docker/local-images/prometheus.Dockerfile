# Prometheus or its Pushgateway from Debian bookworm's packages, for compose.local-images.yml (machines that
# cannot pull prom/prometheus or prom/pushgateway). Built twice, PACKAGE naming which; the entrypoint is the
# package's binary, as in the official images, so docker-compose.yml's arguments apply unchanged. wget serves the
# healthchecks of compose.monitoring.yml.
#
#   docker build -f docker/local-images/prometheus.Dockerfile --build-arg PACKAGE=prometheus .
ARG PYTHON_IMAGE=local/python:3.11-bookworm
FROM ${PYTHON_IMAGE}
ARG PACKAGE=prometheus

RUN case "$PACKAGE" in prometheus|prometheus-pushgateway) ;; \
      *) echo "PACKAGE must be prometheus or prometheus-pushgateway, not $PACKAGE" >&2; exit 1 ;; esac \
    && printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$PACKAGE" wget \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o prometheus -g prometheus -m 0755 /prometheus \
    && ln -s "/usr/bin/$PACKAGE" /usr/local/bin/entrypoint

USER prometheus
WORKDIR /prometheus
ENTRYPOINT ["/usr/local/bin/entrypoint"]
