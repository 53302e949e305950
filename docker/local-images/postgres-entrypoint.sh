#!/bin/sh
# Entrypoint of the Debian-built PostgreSQL image (postgres.Dockerfile): on an empty data folder, initialise the
# cluster with POSTGRES_USER as superuser (password from POSTGRES_PASSWORD, scram-sha-256 over the network) and
# run /docker-entrypoint-initdb.d/*.sql once, on a server that listens on its Unix socket only; then run the
# server in the foreground. The password goes through a file readable by this user alone, never an argument.
#
# It runs as the image's `postgres` user from start to end (the image's USER; docker-compose.yml's `user:
# postgres`), with no capability: it never needs root, and refuses to run as root.
set -eu

: "${POSTGRES_USER:?POSTGRES_USER is required}"
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
PGDATA=${PGDATA:-/var/lib/postgresql/data}
database=${POSTGRES_DB:-postgres}

if [ "$(id -u)" = 0 ]; then
    echo "error: run this image as its postgres user (docker run --user postgres; compose: user: postgres), not root" >&2
    exit 1
fi
if [ ! -w "$PGDATA" ]; then
    echo "error: PGDATA $PGDATA is not writable by $(id -un) (uid $(id -u)); the volume must belong to that user" >&2
    exit 1
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    umask 077
    pwfile=$(mktemp)
    trap 'rm -f "$pwfile"' EXIT
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"

    pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait --silent start
    if [ "$database" != postgres ]; then
        psql -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname=postgres \
            --command="CREATE DATABASE \"$database\"" >/dev/null
    fi
    for script in /docker-entrypoint-initdb.d/*.sql; do
        [ -e "$script" ] || continue
        echo "running $script"
        psql -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname="$database" --file="$script" >/dev/null
    done
    pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
    echo "PostgreSQL initialised in $PGDATA"
fi

exec postgres -D "$PGDATA"
