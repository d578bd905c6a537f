#!/usr/bin/env bash
# The project's test command: Swift unit and in-process integration tests, then the SDK end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
swift test
scripts/e2e.sh
