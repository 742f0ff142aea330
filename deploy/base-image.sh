#!/bin/sh
# Builds a local stand-in for a Debian base image when no registry is reachable:
# debootstrap (minbase) from the Debian mirror apt already uses, trimmed like the
# official -slim images, then `docker import` under the given tag.
#
#   sh deploy/base-image.sh [TAG]        (default: debian:bookworm-slim)
#
# Env: DEBIAN_MIRROR (default: first URI in /etc/apt/sources.list*, else deb.debian.org),
#      DEBIAN_SUITE (default: from TAG, e.g. bookworm), FORCE=1 to rebuild an existing tag.
# Needs root, debootstrap (apt-get install debootstrap) and a running Docker engine.
set -eu
tag=${1:-debian:bookworm-slim}
suite=${DEBIAN_SUITE:-$(echo "${tag#*:}" | sed 's/-.*//')}
log() { echo "[base-image] $*" >&2; }

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
  log "$tag already present"
  exit 0
fi
command -v debootstrap >/dev/null 2>&1 || { log "debootstrap missing: apt-get install -y debootstrap"; exit 1; }

if [ -z "${DEBIAN_MIRROR:-}" ]; then
  DEBIAN_MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    sed -n -e 's#^URIs:[[:space:]]*\(http[^[:space:]]*/debian\)/*$#\1#p' -e 's#^deb[[:space:]]\+\(http[^[:space:]]*/debian\)/*[[:space:]].*#\1#p' |
    head -n1)
  DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/moonring-rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
rootfs="$work/rootfs"
log "debootstrap --variant=minbase $suite from $DEBIAN_MIRROR"
debootstrap --variant=minbase "$suite" "$rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 ||
  { tail -n 30 "$work/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }

# Same sources layout as the official images (main, -updates, -security).
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $DEBIAN_MIRROR
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${DEBIAN_MIRROR%/debian}/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC

# -slim: keep no docs, man pages or locales, now or for later installs.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
CFG
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
echo 'APT::Install-Recommends "false";' >"$rootfs/etc/apt/apt.conf.d/docker-no-recommends"
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$rootfs/usr/share/man/"* "$rootfs/usr/share/info/"* "$rootfs/usr/share/groff/"* \
  "$rootfs/usr/share/lintian/"* "$rootfs/var/cache/apt/"*.bin "$rootfs/var/cache/apt/archives/"*.deb \
  "$rootfs/var/lib/apt/lists/"* "$rootfs/var/log/"*.log "$rootfs/var/log/apt/"* "$rootfs/tmp/"* 2>/dev/null || true
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
: >"$rootfs/etc/hostname"
: >"$rootfs/etc/resolv.conf"

log "docker import -> $tag"
tar -C "$rootfs" --numeric-owner -c . |
  docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' --message "moonring: debootstrap --variant=minbase $suite" - "$tag" >/dev/null
docker image ls "$tag" >&2
