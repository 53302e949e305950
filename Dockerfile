# The prediction service image (what `healthpredict deploy` builds and every deployment target runs):
#
#   docker build -t healthpredict-service:<model version>-<git sha> .
#
# It holds the serving dependencies only (the `service` dependency group, at the versions uv.lock pins): the
# Prefect worker image with the training stack is docker/worker/Dockerfile, the MLflow server image
# docker/mlflow/Dockerfile. PYTHON_IMAGE may point at a locally built/mirrored Python 3.11 image (offline
# builds: docker/base-image.sh).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG UV_VERSION=0.13.9

# ---------------------------------------------------------------------------------------------
# builder: produces a self-contained virtualenv in /opt/venv from binary wheels only.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ARG UV_VERSION

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UV_NO_CACHE=1 \
    UV_NATIVE_TLS=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv

# uv in its own virtualenv (a base image may have Python without pip, e.g. docker/base-image.sh's), outside the
# project's /opt/venv so that `uv sync` never removes it.
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install "uv==${UV_VERSION}"
ENV PATH=/opt/venv/bin:/opt/uv/bin:$PATH

WORKDIR /src
# Dependencies first (a layer that survives code changes), from the lock, binary wheels only; then the
# project without re-resolving them.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-build --no-install-project --only-group service
# Only what the package build needs: no tests, data, .env or VCS metadata.
COPY pyproject.toml README.md ./
COPY healthpredict ./healthpredict
COPY flows ./flows
COPY service ./service
COPY cli ./cli
# The service's import graph must be complete without the training stack: fail the build, not the pod.
RUN uv pip install --python /opt/venv/bin/python --no-deps . \
    && python -c "import service.app, cli.main, healthpredict.fast_inference, numba, skops"

# ---------------------------------------------------------------------------------------------
# service (final, default target): runtime only. No compiler, no sources, non-root.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS service

# libgomp1: OpenMP runtime used by xgboost / scikit-learn (a runtime library, not a toolchain).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 healthpredict \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/healthpredict \
       --shell /usr/sbin/nologin healthpredict

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HEALTHPREDICT_HOME=/tmp/healthpredict \
    HEALTHPREDICT_MODEL_URI=models:/health-predict@champion \
    DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    RAY_USAGE_STATS_ENABLED=0 \
    EVIDENTLY_DISABLE_TELEMETRY=1

WORKDIR /home/healthpredict
USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:8000/health/live', timeout=4)"]

ENTRYPOINT ["healthpredict"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
