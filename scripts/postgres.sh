#!/usr/bin/env bash
# PostgreSQL for the ledger sink's tests, from Debian's package. Idempotent.
#
#   scripts/postgres.sh install   # installs postgresql when missing (apt-get update first), leaves no system server
#                                 # running; the tests start their own (initdb in a temporary folder, a free loopback
#                                 # port) and stop it
#   scripts/postgres.sh path      # prints the folder of initdb and postgres
set -euo pipefail
bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
case "${1:-install}" in
install)
    if [ -z "$(bindir)" ] || [ ! -x "$(bindir)/initdb" ]; then
        SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
        # The package starts a system cluster on 5432; the tests never use it, so leave the machine as it was.
        $SUDO systemctl disable --now postgresql >/dev/null 2>&1 || $SUDO service postgresql stop >/dev/null 2>&1 || true
    fi
    "$(bindir)/postgres" --version >&2
    ;;
path) bindir ;;
*) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
