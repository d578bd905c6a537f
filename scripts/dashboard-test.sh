#!/usr/bin/env bash
# The dashboard's browser test: headless Chromium (Debian's chromium and chromium-driver, installed when missing)
# driven by Selenium (PyPI, in the end-to-end tests' virtual environment) against `switchyard serve`. Writes the
# README's screenshots to docs/screenshots/ (SCREENSHOTS=dir to write them elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=${SUDO:-$(command -v sudo >/dev/null && echo sudo || true)}
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    # A fresh machine has no package lists yet.
    $SUDO apt-get update >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium chromium-driver >/dev/null
fi
VENV=.venv-e2e
if [ ! -x "$VENV/bin/python" ]; then
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        $SUDO apt-get update >/dev/null
        $SUDO apt-get install -y python3-venv >/dev/null
        python3 -m venv "$VENV"
    fi
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/dashboard/requirements.txt

swift build --product switchyard
# Selenium Manager would look for drivers on the network: the system's chromedriver is named instead.
SE_OFFLINE=true CHROMIUM="$(command -v chromium)" CHROMEDRIVER="$(command -v chromedriver)" \
    SWITCHYARD_BIN="$(swift build --show-bin-path)/switchyard" "$VENV/bin/python" -m unittest -v tests/dashboard/test_dashboard.py
