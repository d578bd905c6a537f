#!/usr/bin/env bash
# The project's test command: fetch the on-device model once (cached, verified by SHA-256), run the Swift unit and
# in-process integration tests, then the fuzzers, then the SDK end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --product switchyard
"$(swift build --show-bin-path)/switchyard" models pull
# redis-server (Debian's package) for the Redis client's tests, which start and stop their own servers.
scripts/redis.sh install
# PostgreSQL (Debian's package) for the ledger's PostgreSQL sink, whose tests start and stop their own server.
scripts/postgres.sh install
# One test at a time: on a 2-core machine, tests that run the encoder or build indexes for seconds hold Swift's
# cooperative pool (one thread per core), and the timing tests beside them (deadlines, timeouts, load runs) then
# measured the wait for a free thread instead of the gateway. Serial: about 35 s here; in parallel: 14 s, with a
# timing test failing in 5 of 6 full runs.
swift test --no-parallel
# The parsers under libFuzzer, 30 s each from the committed seed corpus (scripts/fuzz.sh says how to fuzz longer).
scripts/fuzz.sh
scripts/e2e.sh
# The dashboard in headless Chromium (installs chromium and chromium-driver when missing).
scripts/dashboard-test.sh
# Three instances behind nginx on one redis-server, killed and restarted under load (installs nginx when missing).
scripts/cluster-test.sh
