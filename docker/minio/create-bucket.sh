#!/bin/sh
# One-shot storage initialisation for the local stack (runs in the minio/mc image, compose.minio.yml):
# the bucket, kept private, and two users limited to their part of it. Idempotent: safe on every `up`.
set -eu

: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is required}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is required}"
: "${MINIO_BUCKET:?MINIO_BUCKET is required}"
: "${MINIO_MLFLOW_USER:?MINIO_MLFLOW_USER is required}"
: "${MINIO_MLFLOW_PASSWORD:?MINIO_MLFLOW_PASSWORD is required}"
: "${MINIO_FLOWS_USER:?MINIO_FLOWS_USER is required}"
: "${MINIO_FLOWS_PASSWORD:?MINIO_FLOWS_PASSWORD is required}"
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

# A policy that lets its user list the bucket and read/write objects under the given prefixes only.
scoped_policy() {
    name=$1
    shift
    resources=""
    for prefix in "$@"; do
        resources="$resources\"arn:aws:s3:::$MINIO_BUCKET/$prefix/*\","
    done
    file="/tmp/$name.json"
    cat > "$file" <<POLICY
{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"], "Resource": ["arn:aws:s3:::$MINIO_BUCKET"]},
  {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], "Resource": [${resources%,}]}
]}
POLICY
    mc admin policy create local "$name" "$file"
}

scoped_policy healthpredict-mlflow mlflow
scoped_policy healthpredict-flows data prefect-results
mc admin user add local "$MINIO_MLFLOW_USER" "$MINIO_MLFLOW_PASSWORD"
mc admin user add local "$MINIO_FLOWS_USER" "$MINIO_FLOWS_PASSWORD"
mc admin policy attach local healthpredict-mlflow --user "$MINIO_MLFLOW_USER" 2>/dev/null || true
mc admin policy attach local healthpredict-flows --user "$MINIO_FLOWS_USER" 2>/dev/null || true
echo "bucket $MINIO_BUCKET ready; users $MINIO_MLFLOW_USER (mlflow/) and $MINIO_FLOWS_USER (data/, prefect-results/)"
