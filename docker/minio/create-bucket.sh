#!/bin/sh
# One-shot bucket initialisation for the compose stack (runs in the minio/mc image).
# Idempotent: safe to run on every `docker compose up`.
set -eu

: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is required}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is required}"
: "${MINIO_BUCKET:?MINIO_BUCKET is required}"
endpoint="${MINIO_ENDPOINT:-http://minio:9000}"

attempt=0
until mc alias set local "$endpoint" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
    attempt=$((attempt + 1))
    if [ "$attempt" -ge 30 ]; then
        echo "minio at $endpoint did not become reachable" >&2
        exit 1
    fi
    sleep 2
done

mc mb --ignore-existing "local/$MINIO_BUCKET"
# Keep the bucket private (no anonymous access).
mc anonymous set none "local/$MINIO_BUCKET"
echo "bucket $MINIO_BUCKET ready"
