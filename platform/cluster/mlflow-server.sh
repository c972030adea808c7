#!/bin/sh
# Starts the MLflow tracking server the way platform/cluster/ deploys it (mlflow-compose.yaml, and
# mlflow-k8s.yaml, which carries a copy of this file in a ConfigMap): MLflow's basic-auth app, artifacts
# proxied through the server, and every secret taken from the environment. Nothing secret goes on a
# command line, where `ps` and /proc/PID/cmdline show it to every user of the machine: `mlflow server`
# reads the backend store URI from MLFLOW_BACKEND_STORE_URI, and the auth app its admin password from
# MLFLOW_AUTH_ADMIN_PASSWORD. The auth app's own config file needs its database URI (which holds the
# database password), so it is written here, readable by this user only.
#
# Required: MLFLOW_BACKEND_STORE_URI     e.g. postgresql://mlflow:PASSWORD@postgres:5432/mlflow
#           MLFLOW_ARTIFACTS_DESTINATION e.g. s3://YOUR_BUCKET/mlflow
#           MLFLOW_AUTH_ADMIN_PASSWORD   the admin user's password, used when the user store is empty
#           MLFLOW_FLASK_SERVER_SECRET_KEY  the auth app's CSRF key (the same for every replica)
# Optional: MLFLOW_AUTH_DATABASE_URI (default: the backend store; the auth tables do not clash with it),
#           MLFLOW_AUTH_ADMIN_USERNAME (admin), MLFLOW_AUTH_DEFAULT_PERMISSION (READ: every user may read
#           every study; NO_PERMISSIONS to make studies private to their creators),
#           MLFLOW_AUTH_CACHE_TTL_S (300: a password is checked once per 5 minutes and worker, not on every
#           request, where its deliberately slow hash would throttle a sweep's logging; a changed password
#           reaches the other workers after at most this long), MLFLOW_SERVER_ALLOWED_HOSTS, MLFLOW_HOST (0.0.0.0), MLFLOW_PORT (5000), MLFLOW_WORKERS (4).
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?is not set: the database URI with its password, e.g. postgresql://mlflow:PASSWORD@postgres:5432/mlflow}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?is not set: where the server stores artifacts, e.g. s3://YOUR_BUCKET/mlflow}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?is not set: the MLflow admin user password (there is no default)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?is not set: a long random string, e.g. from openssl rand -hex 32}"

umask 077
auth_config=$(mktemp)
# configparser reads `%` as interpolation: a percent-encoded password needs it doubled. (printf is a shell
# builtin and sed reads the URI on stdin, so the password is never an argument either.)
auth_db=$(printf '%s' "${MLFLOW_AUTH_DATABASE_URI:-$MLFLOW_BACKEND_STORE_URI}" | sed 's/%/%%/g')
cat >"$auth_config" <<EOF
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = $auth_db
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_S:-300}
EOF
export MLFLOW_AUTH_CONFIG_PATH="$auth_config" MLFLOW_BACKEND_STORE_URI MLFLOW_ARTIFACTS_DESTINATION

exec mlflow server --app-name basic-auth --serve-artifacts \
  --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-4}"
