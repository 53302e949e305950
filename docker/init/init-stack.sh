#!/usr/bin/env bash
# One-shot initialisation of the compose stack (service `init`, docker-compose.yml), idempotent:
#   1. the `healthpredict` process work pool;
#   2. the prefect-aws blocks for the S3 artifact store (`healthpredict blocks create`);
#   3. every deployment of prefect.yaml (`prefect deploy --all`), so the Prefect UI is ready to run;
#   4. MLflow's read-only user for the prediction API (created, or its password set again; never an admin), and
#      a check that the server refuses it a write (the MLflow image's read_only_auth.py, which must name it in
#      MLFLOW_READ_ONLY_USERS): init fails rather than leave a service user that could register models.
# Needs PREFECT_API_URL with PREFECT_API_AUTH_STRING, MLFLOW_TRACKING_URI with the admin's
# MLFLOW_TRACKING_USERNAME/PASSWORD, HEALTHPREDICT_BUCKET, MLFLOW_SERVICE_USER and MLFLOW_SERVICE_PASSWORD. Run from
# the folder holding prefect.yaml.
set -euo pipefail

: "${PREFECT_API_URL:?PREFECT_API_URL is required}"
: "${PREFECT_API_AUTH_STRING:?PREFECT_API_AUTH_STRING is required (user:password of the Prefect API)}"
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

# Through MLflow's auth REST API as the admin (plain HTTP: the flows image carries MLflow's client, not the
# server's auth app and its Flask dependencies).
python - <<'PY'
import base64
import json
import os
import urllib.error
import urllib.request

tracking = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
user, password = os.environ["MLFLOW_SERVICE_USER"], os.environ["MLFLOW_SERVICE_PASSWORD"]


def headers(username: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


admin = headers(os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])


def call(method: str, path: str, body: dict[str, object], as_user: dict[str, str] = admin) -> None:
    request = urllib.request.Request(f"{tracking}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                     headers=as_user, method=method)
    with urllib.request.urlopen(request, timeout=30):
        pass


try:
    call("POST", "users/create", {"username": user, "password": password})
    print(f"MLflow user {user} created")
except urllib.error.HTTPError as exc:
    answer = exc.read().decode(errors="replace")
    if "RESOURCE_ALREADY_EXISTS" not in answer:
        raise SystemExit(f"creating MLflow user {user} failed: HTTP {exc.code} {answer[:300]}") from None
    call("PATCH", "users/update-password", {"username": user, "password": password})
    print(f"MLflow user {user} exists; password set again")
call("PATCH", "users/update-admin", {"username": user, "is_admin": False})

# The server must refuse this user any write (it would otherwise own what it creates).
try:
    call("POST", "experiments/create", {"name": "healthpredict-read-only-check"}, as_user=headers(user, password))
except urllib.error.HTTPError as exc:
    if exc.code != 403:
        raise SystemExit(f"checking that MLflow user {user} is read-only failed: HTTP {exc.code}") from None
    print(f"MLflow user {user} is read-only: the server refuses it every write")
else:
    raise SystemExit(
        f"MLflow lets {user} create an experiment: the MLflow server's MLFLOW_READ_ONLY_USERS must name it "
        "(docker/mlflow/start-mlflow.sh)"
    )
PY
echo "stack initialised: work pool, blocks, deployments, read-only MLflow user $MLFLOW_SERVICE_USER"
