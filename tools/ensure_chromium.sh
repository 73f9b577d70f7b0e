#!/usr/bin/env bash
# tests/test_report.py opens the demo's report in headless Chromium (Debian's package):
# install it when missing (as root, with apt), or say what to install.
set -euo pipefail
if [ -n "${USV_RAY_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
else
  echo "the tests need headless Chromium: run 'apt-get install -y chromium' as root" \
    "(Debian), or install Chromium and set USV_RAY_CHROMIUM to its path" >&2
  exit 1
fi
