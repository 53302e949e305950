# PostgreSQL 15 from Debian bookworm's own package, for compose.local-images.yml (machines that cannot pull
# `postgres:15.13-bookworm`). It keeps the official image's contract that docker-compose.yml relies on:
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, the data in /var/lib/postgresql/data, and the *.sql files
# of /docker-entrypoint-initdb.d run once on an empty data folder (postgres-entrypoint.sh).
ARG PYTHON_IMAGE=local/python:3.11-bookworm
FROM ${PYTHON_IMAGE}

# No service is started while packages install (no init system in a build), and no default cluster is made.
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-common \
    && echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres -m 2775 /var/run/postgresql \
    && install -d -m 0755 /docker-entrypoint-initdb.d

COPY docker/local-images/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh

ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["sh", "/usr/local/bin/postgres-entrypoint.sh"]
