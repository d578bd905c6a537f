#!/usr/bin/env bash
# redis-server for the tests, from Debian's package. Idempotent.
#
#   scripts/redis.sh install    # installs redis-server when missing (apt-get update first, once per machine)
#   scripts/redis.sh path       # prints the binary the tests start (they start and stop their own servers, on free
#                               # loopback ports, each in its own temporary folder)
set -euo pipefail
binary() { command -v redis-server || { [ -x /usr/bin/redis-server ] && echo /usr/bin/redis-server; } || true; }
case "${1:-install}" in
install)
    if [ -z "$(binary)" ]; then
        SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
        # The package starts a system server on 6379; the tests never use it, so leave the machine as it was.
        $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || $SUDO service redis-server stop >/dev/null 2>&1 || true
    fi
    "$(binary)" --version >&2
    ;;
path) binary ;;
*) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
