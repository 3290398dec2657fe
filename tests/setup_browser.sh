#!/usr/bin/env bash
# Install the headless browser tests/test_browser.py drives: Debian's chromium package
# (Playwright's Python package is used with executable_path=/usr/bin/chromium; no
# browser is downloaded by Playwright). Idempotent: does nothing when it is there.
set -euo pipefail
CHROMIUM="${FGNB_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  echo "setup_browser: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM") already installed"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
"$CHROMIUM" --version
