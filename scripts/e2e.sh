#!/usr/bin/env bash
# End-to-end tests with the official OpenAI and Anthropic Python SDKs (from PyPI) against `switchyard serve`.
# Idempotent: the virtual environment is created once and reused.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-e2e
if [ ! -x "$VENV/bin/python" ]; then
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        # Debian's python3 needs python3-venv for virtual environments.
        rm -rf "$VENV"
        ${SUDO:-$(command -v sudo >/dev/null && echo sudo)} apt-get update >/dev/null
        ${SUDO:-$(command -v sudo >/dev/null && echo sudo)} apt-get install -y python3-venv >/dev/null
        python3 -m venv "$VENV"
    fi
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt

swift build --product switchyard
SWITCHYARD_BIN="$(swift build --show-bin-path)/switchyard" "$VENV/bin/python" -m unittest -v tests/e2e/test_sdks.py
