#!/usr/bin/env bash
# The project's test command: fetch the on-device model once (cached, verified by SHA-256), run the Swift unit and
# in-process integration tests, then the SDK end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --product switchyard
"$(swift build --show-bin-path)/switchyard" models pull
swift test
scripts/e2e.sh
