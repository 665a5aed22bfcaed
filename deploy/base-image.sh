#!/usr/bin/env bash
# Build a local Debian 12 (bookworm) base image with Python 3.11 for deploy/Dockerfile,
# for machines whose Docker engine cannot pull python:3.11-slim (no registry reachable).
#
#   ./deploy/base-image.sh                       # builds borealdb-base:bookworm unless it exists
#   docker-compose build --build-arg BASE_IMAGE=borealdb-base:bookworm   # or: BASE_IMAGE=... docker-compose build
#   docker build --build-arg BASE_IMAGE=borealdb-base:bookworm -f deploy/Dockerfile -t borealdb .
#
# How: `debootstrap --variant=minbase bookworm` into a temporary directory (with
# python3, python3-venv and ca-certificates), then `tar | docker import`. Needs root,
# debootstrap (apt-get install debootstrap) and a reachable Debian mirror; it needs no
# image registry. Takes a few minutes (mostly downloading about 40 MB of packages).
#
# Local CA certificates of this host (EXTRA_CA_DIR, by default Debian's
# /usr/local/share/ca-certificates/*.crt) are added to the image's trust store, and
# PIP_CERT/SSL_CERT_FILE point at that store, so that `pip install` in `docker build`
# works behind the same TLS-inspecting proxy the host trusts. Nothing else of the host
# is copied.
#
# Idempotent: if the image already exists it says so and exits 0 (FORCE=1 rebuilds).
# Environment:
#   IMAGE=borealdb-base:bookworm      the tag to build
#   MIRROR=http://deb.debian.org/debian   the Debian mirror (default: the first
#                                     bookworm mirror in /etc/apt/sources.list*, else deb.debian.org)
#   SUITE=bookworm                    the Debian release (its python3 must be >= 3.11)
#   WORKDIR=/tmp                      where the temporary root file system goes (removed after)
#   EXTRA_CA_DIR=/usr/local/share/ca-certificates   *.crt files to trust in the image
#                                     (EXTRA_CA_DIR= for none)
#   FORCE=1                           rebuild even if the image exists
# Exit codes: 0 built or already there, 1 failure (the message says why).
set -euo pipefail

IMAGE="${IMAGE:-borealdb-base:bookworm}"
SUITE="${SUITE:-bookworm}"
WORKDIR="${WORKDIR:-/tmp}"
EXTRA_CA_DIR="${EXTRA_CA_DIR-/usr/local/share/ca-certificates}"
PACKAGES="python3,python3-venv,ca-certificates"

say() { echo "base-image: $*" >&2; }
die() { say "error: $*"; exit 1; }

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) die "unknown argument $1 (see --help)" ;;
esac

command -v docker >/dev/null || die "no docker CLI on PATH"
docker info >/dev/null 2>&1 || die "no Docker engine reachable (docker info fails)"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE already exists ($(docker image inspect -f '{{.Created}}' "$IMAGE")); nothing to do (FORCE=1 rebuilds)"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"

if [ -z "${MIRROR:-}" ]; then
    # The mirror apt already uses: a deb822 "URIs:" line or a one-line "deb URI bookworm ..." entry.
    MIRROR="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}
               /^deb / && $3 == "'"$SUITE"'" && $2 ~ /\/debian\/?$/ {print $2; exit}')" || true
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi

rootfs="$(mktemp -d "$WORKDIR/borealdb-rootfs.XXXXXX")"
cleanup() { rm -rf --one-file-system "$rootfs"; }
trap cleanup EXIT

start=$(date +%s)
say "debootstrap $SUITE ($PACKAGES) from $MIRROR into $rootfs"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" \
    > "$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; die "debootstrap failed"; }
rm -f "$rootfs.log"
say "debootstrap done in $(( $(date +%s) - start ))s"

# Apt inside the image uses the same mirror; drop caches and logs to keep it small.
echo "deb $MIRROR $SUITE main" > "$rootfs/etc/apt/sources.list"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
shopt -s nullglob
cas=()
[ -n "$EXTRA_CA_DIR" ] && cas=("$EXTRA_CA_DIR"/*.crt)
if [ ${#cas[@]} -gt 0 ]; then
    say "trusting ${#cas[@]} local CA certificate(s) from $EXTRA_CA_DIR"
    cp "${cas[@]}" "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed in the new root file system"
fi
pyver="$(chroot "$rootfs" /usr/bin/python3 -c 'import ensurepip, venv, sys; print(sys.version.split()[0])')" \
    || die "python3 (with venv and ensurepip) does not run in the new root file system"
say "python $pyver"

say "importing as $IMAGE ($(du -sh "$rootfs" | cut -f1))"
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    --message "borealdb base: debian $SUITE minbase + $PACKAGES (deploy/base-image.sh)" \
    - "$IMAGE" >/dev/null
say "built $IMAGE in $(( $(date +%s) - start ))s; use it with BASE_IMAGE=$IMAGE"
