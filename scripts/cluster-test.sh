#!/usr/bin/env bash
# The scale-out tests: three instances behind nginx on one redis-server (scripts/cluster.sh), through the balancer,
# with the instances and the store killed under load. Uses the SDK virtual environment of scripts/e2e.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-e2e
[ -x "$VENV/bin/python" ] || { echo "cluster-test.sh: run scripts/e2e.sh first (it creates $VENV)" >&2; exit 1; }
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
swift build --product switchyard
SWITCHYARD_BIN="$(swift build --show-bin-path)/switchyard" "$VENV/bin/python" -m unittest -v tests/cluster/test_cluster.py
