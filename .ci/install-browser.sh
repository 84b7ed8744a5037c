#!/usr/bin/env bash
# Debian's Chromium for the web app's browser test (Playwright drives it; no browser download).
set -euo pipefail
command -v chromium >/dev/null && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
