#!/usr/bin/env bash
# Build a local Python 3.11 base image from Debian bookworm, for building the project's images where no base
# image can be pulled (offline machines, CI). Needs root, debootstrap and a Docker engine.
#
#   sudo docker/base-image.sh [image]          # default: local/python:3.11-bookworm
#   docker build --build-arg PYTHON_IMAGE=local/python:3.11-bookworm -t healthpredict-service:<tag> .
#
# Certificates this machine added under /usr/local/share/ca-certificates (e.g. a TLS-intercepting proxy's)
# are trusted in the image, so pip and apt work inside builds. DEBIAN_MIRROR overrides the Debian mirror.
set -euo pipefail

IMAGE=${1:-local/python:3.11-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE already exists"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is required (apt-get install debootstrap)" >&2; exit 1; }

ROOTFS=$(mktemp -d /tmp/healthpredict-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
  bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || { tail -20 "$ROOTFS.log" >&2; exit 1; }
rm -f "$ROOTFS.log"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
  chroot "$ROOTFS" update-ca-certificates >/dev/null
fi
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*

tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' \
  - "$IMAGE" >/dev/null
echo "base image $IMAGE built from Debian bookworm ($(chroot "$ROOTFS" python3 --version))"
