#!/usr/bin/env bash
# Debian's chromium and its matching chromedriver, for the report's browser test
# (tests/test_report.py). Run by `make test` and by that test when either is missing; does
# nothing when both are installed. Needs root (or sudo) and the Debian package mirrors.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q chromium chromium-driver
command -v chromium >/dev/null && command -v chromedriver >/dev/null
