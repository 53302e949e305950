#!/bin/sh
# Entrypoint of the MLflow image: with `--app-name basic-auth`, write the auth app's configuration from the
# environment first (its user database and the default permission; the admin comes from MLFLOW_AUTH_ADMIN_*),
# so no password is baked into the image or passed as an argument. Then run `mlflow` with the arguments given.
set -eu

case " $* " in
  *" basic-auth "*)
    : "${MLFLOW_AUTH_DATABASE_URI:?MLFLOW_AUTH_DATABASE_URI is required for basic-auth}"
    : "${MLFLOW_ADMIN_PASSWORD:?MLFLOW_ADMIN_PASSWORD is required for basic-auth}"
    : "${MLFLOW_FLASK_SERVER_SECRET_KEY:?MLFLOW_FLASK_SERVER_SECRET_KEY is required for basic-auth}"
    export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_ADMIN_USER:-admin}"
    export MLFLOW_AUTH_ADMIN_PASSWORD="$MLFLOW_ADMIN_PASSWORD"
    export MLFLOW_AUTH_CONFIG_PATH="${TMPDIR:-/tmp}/basic_auth.ini"
    umask 077
    cat > "$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
# Signed-in users read everything; only the admin (and what it grants) registers models and moves aliases.
default_permission = READ
database_uri = $MLFLOW_AUTH_DATABASE_URI
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    ;;
esac
exec mlflow "$@"
