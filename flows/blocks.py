"""Prefect blocks for an S3 artifact store: ``AwsCredentials`` and ``S3Bucket`` from prefect-aws.

``healthpredict blocks create --bucket B`` saves them from the standard ``AWS_*`` environment (and
``AWS_ENDPOINT_URL`` for minio or moto); flows then persist their task results in that bucket whenever
``HEALTHPREDICT_ARTIFACT_URI`` is an ``s3://`` URI, so a later flow run on another worker can read them.
"""

from __future__ import annotations

from prefect_aws import AwsCredentials, S3Bucket
from prefect_aws.client_parameters import AwsClientParameters

from healthpredict.settings import Settings

AWS_CREDENTIALS_BLOCK = "healthpredict-aws"
S3_BUCKET_BLOCK = "healthpredict-artifacts"
RESULTS_FOLDER = "prefect-results"


def create_aws_blocks(settings: Settings, bucket: str) -> dict[str, str]:
    """Save (or overwrite) the credentials and bucket blocks; returns their slugs."""
    if not bucket:
        raise ValueError("a bucket name is required (--bucket)")
    aws = settings.aws
    parameters = AwsClientParameters(endpoint_url=aws.endpoint_url) if aws.endpoint_url else None
    credentials = AwsCredentials(
        aws_access_key_id=aws.access_key_id,
        aws_secret_access_key=aws.secret_access_key,
        aws_session_token=aws.session_token,
        profile_name=aws.profile,
        region_name=aws.region,
        **({"aws_client_parameters": parameters} if parameters else {}),
    )
    credentials.save(AWS_CREDENTIALS_BLOCK, overwrite=True)
    S3Bucket(bucket_name=bucket, credentials=credentials, bucket_folder=RESULTS_FOLDER).save(
        S3_BUCKET_BLOCK, overwrite=True
    )
    return {"credentials": f"aws-credentials/{AWS_CREDENTIALS_BLOCK}", "bucket": f"s3-bucket/{S3_BUCKET_BLOCK}"}


def result_storage(settings: Settings) -> S3Bucket | None:
    """The S3 bucket block for task results when the artifact store is S3; ``None`` keeps Prefect's default."""
    if not settings.data.artifact_uri.startswith("s3://"):
        return None
    try:
        return S3Bucket.load(S3_BUCKET_BLOCK)
    except ValueError as exc:
        raise RuntimeError(
            f"HEALTHPREDICT_ARTIFACT_URI is on S3 but the Prefect block s3-bucket/{S3_BUCKET_BLOCK} does not exist; "
            "create it with `healthpredict blocks create --bucket <bucket>`"
        ) from exc
