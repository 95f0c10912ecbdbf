#!/usr/bin/env bash
# Make sure headless Chromium is installed (Debian package chromium): the report's test
# opens the HTML page in it. Nothing else in filterprune needs a browser.
set -euo pipefail
for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then exit 0; fi
done
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
echo "Installing Chromium (Debian package chromium) for the report's browser test..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
