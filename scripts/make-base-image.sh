#!/bin/sh
# Makes the Debian base image of the CPU image flavour, `localhost/debian:bookworm`, with debootstrap, for hosts
# that reach Debian's package mirror but no container registry. Idempotent: an existing image is kept (~0.1 s).
#   IMAGE   image name to create (default localhost/debian:bookworm)
#   MIRROR  Debian mirror (default: the one this host's apt already uses, else deb.debian.org)
#   ENGINE  container CLI (default podman; docker works too)
# Where a registry is reachable, skip this and build with --build-arg BASE_IMAGE=debian:bookworm-slim.
set -eu

image="${IMAGE:-localhost/debian:bookworm}"
engine="${ENGINE:-podman}"

if "$engine" image exists "$image" 2>/dev/null; then
    echo "make-base-image: $image exists"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "make-base-image: debootstrap needs root" >&2
    exit 1
fi

if [ -z "${MIRROR:-}" ]; then
    # First `URIs:` (deb822) or `deb URL` line of apt's sources that points at the main Debian archive.
    MIRROR="$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)\/*$/\1/p' \
                 -e 's/^deb[[:space:]]\{1,\}\([^[:space:]]*\/debian\)\/*[[:space:]].*/\1/p' | head -n1)"
fi
mirror="${MIRROR:-http://deb.debian.org/debian}"

rootfs="$(mktemp -d /var/tmp/alm-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT INT TERM
echo "make-base-image: debootstrap bookworm from $mirror"
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
# apt inside builds keeps no package lists or .deb files in layers.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
tar -C "$rootfs" -c . | "$engine" import --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "make-base-image: $image created"
