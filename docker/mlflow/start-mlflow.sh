#!/bin/sh
# Entrypoint of the MLflow image: with `--app-name basic-auth`, write the auth app's configuration from the
# environment first (its user database, the default permission and the sign-in function; the admin comes from
# MLFLOW_AUTH_ADMIN_*), so no password is baked into the image or passed as an argument. Then run `mlflow` with
# the arguments given.
#
# The sign-in function is read_only_auth.py, beside this script: MLflow's basic auth, except that the users
# named in MLFLOW_READ_ONLY_USERS (the prediction API's) may only read: every other request of theirs gets 403.
set -eu

case " $* " in
  *" basic-auth "*)
    : "${MLFLOW_AUTH_DATABASE_URI:?MLFLOW_AUTH_DATABASE_URI is required for basic-auth}"
    : "${MLFLOW_ADMIN_PASSWORD:?MLFLOW_ADMIN_PASSWORD is required for basic-auth}"
    : "${MLFLOW_FLASK_SERVER_SECRET_KEY:?MLFLOW_FLASK_SERVER_SECRET_KEY is required for basic-auth}"
    : "${MLFLOW_READ_ONLY_USERS?MLFLOW_READ_ONLY_USERS is required for basic-auth (the read-only users, comma-separated; may be empty)}"
    export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_ADMIN_USER:-admin}"
    export MLFLOW_AUTH_ADMIN_PASSWORD="$MLFLOW_ADMIN_PASSWORD"
    export MLFLOW_AUTH_CONFIG_PATH="${TMPDIR:-/tmp}/basic_auth.ini"
    here=$(cd "$(dirname "$0")" && pwd)
    export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
    umask 077
    cat > "$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
# Signed-in users read everything; only the admin (and what it grants) registers models and moves aliases.
# The read-only users create and change nothing (read_only_auth.py).
default_permission = READ
database_uri = $MLFLOW_AUTH_DATABASE_URI
authorization_function = read_only_auth:authenticate_request_read_only_users
INI
    ;;
esac
exec mlflow "$@"
