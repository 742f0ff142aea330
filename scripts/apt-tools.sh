#!/bin/sh
# Installs Debian packages tests need (e.g. chromium for the dashboard test, prometheus for
# promtool) when their command is missing: apt-get as root, or sudo -n. Usage:
#   apt-tools.sh COMMAND PACKAGE   (exit 0: COMMAND is on PATH now; 3: it could not be installed)
set -u
cmd=$1
pkg=$2
command -v "$cmd" >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
  echo "[apt-tools] $cmd missing and not root (no passwordless sudo): cannot apt-get install $pkg" >&2
  exit 3
fi
command -v apt-get >/dev/null 2>&1 || { echo "[apt-tools] $cmd missing and no apt-get" >&2; exit 3; }
echo "[apt-tools] installing $pkg (Debian) for $cmd" >&2
export DEBIAN_FRONTEND=noninteractive
lock="-o DPkg::Lock::Timeout=600"
# update only when the package is unknown to apt's lists
apt-cache show "$pkg" >/dev/null 2>&1 || $sudo apt-get $lock update -qq >&2 || true
$sudo apt-get $lock install -y -qq --no-install-recommends "$pkg" >&2 || { echo "[apt-tools] apt-get install $pkg failed" >&2; exit 3; }
command -v "$cmd" >/dev/null 2>&1 || exit 3
