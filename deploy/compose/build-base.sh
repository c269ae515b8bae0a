#!/bin/sh
# A Debian bookworm base image made from Debian's own packages, for hosts that reach a Debian
# mirror but no container image registry: debootstrap (minbase) plus python3 + venv (gateway and
# sandboxes), redis-server and nginx (the compose topology's Redis and load balancer), then
# `docker import` under a local tag. Idempotent: does nothing when the tag exists.
#
#   deploy/compose/build-base.sh            # tag orggraph-base:bookworm
#   ORGGRAPH_BASE_IMAGE=my/base:tag MIRROR=http://my.mirror/debian deploy/compose/build-base.sh
#
# Needs root (debootstrap, chroot) and a running Docker engine. The root filesystem is made
# under $WORK_DIR (default /var/tmp/orggraph-base, never the repository) and removed afterwards.
set -eu

TAG="${ORGGRAPH_BASE_IMAGE:-orggraph-base:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
WORK_DIR="${WORK_DIR:-/var/tmp/orggraph-base}"
PACKAGES="ca-certificates python3 python3-venv redis-server nginx"

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "build-base: $TAG exists, nothing to do"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "build-base: debootstrap and chroot need root" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "build-base: installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

ROOTFS="$WORK_DIR/rootfs"
cleanup() {
    for m in proc sys dev/pts dev; do
        mountpoint -q "$ROOTFS/$m" 2>/dev/null && umount -l "$ROOTFS/$m" || true
    done
    rm -rf "$ROOTFS"
}
trap cleanup EXIT
cleanup
mkdir -p "$ROOTFS"

start=$(date +%s)
echo "build-base: debootstrap --variant=minbase $SUITE from $MIRROR into $ROOTFS"
debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK_DIR/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK_DIR/debootstrap.log" >&2
    exit 1
}

# No service may start inside the chroot: redis-server's and nginx's maintainer scripts would
# otherwise start daemons on the host's own network (ports 6379 and 80). Kept in the image, as
# Debian's official images do.
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
mount -t proc proc "$ROOTFS/proc"
echo "build-base: apt-get install $PACKAGES"
chroot "$ROOTFS" sh -c "
    export DEBIAN_FRONTEND=noninteractive LC_ALL=C
    apt-get update -qq &&
    apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null &&
    apt-get clean &&
    rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /etc/nginx/sites-enabled/default &&
    ln -sf /dev/stdout /var/log/nginx/access.log &&
    ln -sf /dev/stderr /var/log/nginx/error.log
" >"$WORK_DIR/packages.log" 2>&1 || {
    tail -n 30 "$WORK_DIR/packages.log" >&2
    exit 1
}
umount "$ROOTFS/proc"

echo "build-base: docker import as $TAG"
tar -C "$ROOTFS" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $SUITE + $PACKAGES" \
    - "$TAG" >/dev/null
echo "build-base: $TAG built in $(($(date +%s) - start))s ($(docker image inspect -f '{{.Size}}' "$TAG") bytes)"
