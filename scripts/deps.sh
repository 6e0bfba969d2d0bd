#!/usr/bin/env bash
# Installs what tessera's build and tests need, when missing.
# Usage: scripts/deps.sh build|test
#   build: Debian packages for the rocksdb build (clang, libclang-dev) and, when npm is
#          missing, Node.js + npm for the console build
#   test:  also curl, MariaDB (server + client), Chromium, and a Python venv with schemathesis (the OpenAPI fuzzer the tests
#          run) under $TESSERA_TOOLS (default /var/cache/tessera/tools when writable,
#          else ~/.cache/tessera/tools); versions pinned below
set -euo pipefail
want=(clang libclang-dev)          # rocksdb's C++ build and its bindgen
command -v npm >/dev/null || want+=(nodejs npm)  # the web console's build (ui/, run by build.rs)
if [ "${1:-build}" = test ]; then
  want+=(curl)                     # a TLS + HTTP/2 client for peer-listener tests
  want+=(openssl)                  # certificates for the console's e2e test
  want+=(mariadb-server mariadb-client sysbench)  # real MySQL backends and clients for the DB proxy tests
  want+=(chromium)                 # the console's end-to-end tests (Playwright drives Debian's Chromium)
  command -v python3 >/dev/null || want+=(python3)
  python3 -c 'import venv, ensurepip' 2>/dev/null || want+=(python3-venv)
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
if [ "${1:-build}" = test ]; then
  tools=${TESSERA_TOOLS:-}
  if [ -z "$tools" ]; then
    if mkdir -p /var/cache/tessera/tools 2>/dev/null && [ -w /var/cache/tessera/tools ]; then
      tools=/var/cache/tessera/tools
    else
      tools=$HOME/.cache/tessera/tools
    fi
  fi
  # schemathesis 3.39 breaks with hypothesis > 6.131.14 ('many' object has no attribute 'more').
  pins="schemathesis==3.39.16 hypothesis==6.131.14"
  if [ ! -x "$tools/venv/bin/schemathesis" ] || [ "$(cat "$tools/venv/.pins" 2>/dev/null)" != "$pins" ]; then
    echo "installing into $tools/venv: $pins"
    rm -rf "$tools/venv"
    mkdir -p "$tools"
    python3 -m venv "$tools/venv"
    # shellcheck disable=SC2086
    "$tools/venv/bin/pip" install -q --disable-pip-version-check $pins
    echo "$pins" > "$tools/venv/.pins"
  fi
fi
