# HealthPredict container images.
#
#   docker build -t healthpredict-service:<model version>-<git sha> .            # prediction API (default)
#   docker build --target mlflow-server -t healthpredict-mlflow:<tag> .           # MLflow tracking server
#
# PYTHON_IMAGE may point at a locally built/mirrored Python 3.11 image (offline builds).
ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# builder: compilers allowed here only; produces a self-contained virtualenv in /opt/venv.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip setuptools wheel

WORKDIR /src
# Only what the package build needs: no tests, data, .env or VCS metadata.
COPY pyproject.toml README.md ./
COPY healthpredict ./healthpredict
COPY flows ./flows
COPY service ./service
RUN pip install .

# ---------------------------------------------------------------------------------------------
# mlflow-server: tracking server with the PostgreSQL driver and boto3 for S3/minio artifacts.
# Used by docker-compose.yml (target: mlflow-server).
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS mlflow-server

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv \
    && pip install "mlflow>=3.1,<4" "psycopg2-binary>=2.9" "boto3>=1.34" \
    && groupadd --system --gid 10001 mlflow \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/mlflow \
       --shell /usr/sbin/nologin mlflow

USER 10001:10001
WORKDIR /home/mlflow
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:5000/health', timeout=4)"]
ENTRYPOINT ["mlflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]

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
    MPLCONFIGDIR=/tmp/matplotlib \
    HEALTHPREDICT_MODEL_URI=models:/health-predict@champion

WORKDIR /home/healthpredict
USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:8000/health/live', timeout=4)"]

ENTRYPOINT ["healthpredict"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
