#!/usr/bin/env bash
# Installs the Debian packages tessera's build and tests need, when missing.
# Usage: scripts/deps.sh build|test
set -euo pipefail
want=(clang libclang-dev)          # rocksdb's C++ build and its bindgen
if [ "${1:-build}" = test ]; then
  want+=(curl)                     # a TLS + HTTP/2 client for peer-listener tests; later: mariadb-server, chromium
fi
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
