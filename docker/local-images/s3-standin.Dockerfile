# A stand-in for MinIO on machines that cannot pull its image (compose.local-images.yml): moto's S3 server, from
# uv.lock (the `s3-standin` dependency group). It speaks the S3 API the stack uses (buckets, objects, listing)
# but does not enforce the scoped users and policies that docker/minio/create-bucket.sh gives MinIO: every
# credential may do everything. A local test double, never a store for real data.
#
#   docker build -f docker/local-images/s3-standin.Dockerfile .
ARG PYTHON_IMAGE=local/python:3.11-bookworm
ARG UV_VERSION=0.13.9

FROM ${PYTHON_IMAGE}
ARG UV_VERSION

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UV_NO_CACHE=1 \
    UV_NATIVE_TLS=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv

RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml uv.lock ./
RUN /opt/uv/bin/uv sync --frozen --no-build --no-install-project --only-group s3-standin \
    && rm -rf /opt/uv /src \
    && groupadd --system --gid 10001 s3 \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin s3

COPY docker/local-images/create-bucket.py /usr/local/bin/create-bucket.py

ENV PATH=/opt/venv/bin:$PATH
USER 10001:10001
WORKDIR /tmp
EXPOSE 9000
ENTRYPOINT ["moto_server"]
CMD ["--host", "0.0.0.0", "--port", "9000"]
