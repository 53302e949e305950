#!/usr/bin/env bash
# One-shot initialisation of the compose stack (service `init`, docker-compose.yml), idempotent:
#   1. the `healthpredict` process work pool;
#   2. the prefect-aws blocks for the S3 artifact store (`healthpredict blocks create`);
#   3. every deployment of prefect.yaml (`prefect deploy --all`), so the Prefect UI is ready to run;
#   4. MLflow's read-only user for the prediction API (created, or its password set again).
# Needs PREFECT_API_URL, MLFLOW_TRACKING_URI with the admin's MLFLOW_TRACKING_USERNAME/PASSWORD,
# HEALTHPREDICT_BUCKET, MLFLOW_SERVICE_USER and MLFLOW_SERVICE_PASSWORD. Run from the folder holding prefect.yaml.
set -euo pipefail

: "${PREFECT_API_URL:?PREFECT_API_URL is required}"
: "${MLFLOW_TRACKING_URI:?MLFLOW_TRACKING_URI is required}"
: "${HEALTHPREDICT_BUCKET:?HEALTHPREDICT_BUCKET is required}"
: "${MLFLOW_SERVICE_USER:?MLFLOW_SERVICE_USER is required}"
: "${MLFLOW_SERVICE_PASSWORD:?MLFLOW_SERVICE_PASSWORD is required}"
cd "${HEALTHPREDICT_DEPLOYMENTS_DIR:-/opt/healthpredict}"
export PREFECT_CLI_PROMPT=false

if prefect work-pool inspect healthpredict >/dev/null 2>&1; then
  echo "work pool healthpredict exists"
else
  prefect work-pool create healthpredict --type process
fi
healthpredict blocks create --bucket "$HEALTHPREDICT_BUCKET"
prefect --no-prompt deploy --all

python - <<'PY'
import os

from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client

client = get_app_client("basic-auth", tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
user, password = os.environ["MLFLOW_SERVICE_USER"], os.environ["MLFLOW_SERVICE_PASSWORD"]
try:
    client.create_user(username=user, password=password)
    print(f"MLflow user {user} created (read-only: the server's default permission is READ)")
except MlflowException as exc:
    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
        raise
    client.update_user_password(username=user, password=password)
    print(f"MLflow user {user} exists; password set again")
PY
echo "stack initialised: work pool, blocks, deployments, MLflow user $MLFLOW_SERVICE_USER"
