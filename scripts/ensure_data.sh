#!/usr/bin/env bash
# Make sure the Fashion-MNIST IDX files are on disk (Debian package dataset-fashion-mnist).
set -euo pipefail
if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then exit 0; fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
