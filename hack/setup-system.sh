#!/usr/bin/env bash
# Debian packages the tests and the local cluster need. Skips apt entirely when all are present.
set -euo pipefail
PKGS=(espeak-ng sox libsndfile1 ffmpeg openssl iproute2 util-linux ca-certificates chromium)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "[setup] Debian packages present" >&2
  exit 0
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "[setup] installing Debian packages: ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
