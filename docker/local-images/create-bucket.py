"""One-shot storage initialisation against the S3 stand-in (compose.local-images.yml's `minio-init`): waits for
the endpoint, then makes the stack's bucket if it is missing. Idempotent.

moto accepts every credential, so the scoped users of docker/minio/create-bucket.sh have no meaning here; the
bucket is all this stand-in needs."""

from __future__ import annotations

import os
import sys
import time

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError


def main() -> int:
    endpoint = os.environ.get("MINIO_ENDPOINT", "http://minio:9000")
    bucket = os.environ.get("MINIO_BUCKET")
    if not bucket:
        print("MINIO_BUCKET is required", file=sys.stderr)
        return 2
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=os.environ.get("MINIO_ROOT_USER", "stand-in"),
        aws_secret_access_key=os.environ.get("MINIO_ROOT_PASSWORD", "stand-in"),
    )
    for _attempt in range(30):
        try:
            client.list_buckets()
            break
        except EndpointConnectionError:
            time.sleep(2)
    else:
        print(f"the S3 stand-in at {endpoint} did not become reachable", file=sys.stderr)
        return 1
    try:
        client.head_bucket(Bucket=bucket)
        print(f"bucket {bucket} exists")
    except ClientError:
        client.create_bucket(Bucket=bucket)
        print(f"bucket {bucket} created")
    return 0


if __name__ == "__main__":
    sys.exit(main())
