#!/usr/bin/env bash
# Real components some integration tests drive: PostgreSQL (team MLflow server) and Chromium + ChromeDriver (the
# MLflow UI test). Installed from Debian/Ubuntu packages when missing and when this machine can (root or sudo, apt).
# Elsewhere it says what is missing and the tests that need it skip with that reason.
set -uo pipefail
need=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || need+=(postgresql)
command -v chromium > /dev/null || command -v chromium-browser > /dev/null || need+=(chromium)
command -v chromedriver > /dev/null || need+=(chromium-driver)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get > /dev/null; then
  echo "install-test-services: no apt-get; install ${need[*]} yourself or the tests that need them will skip" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2> /dev/null; then SUDO="sudo -n"; else
    echo "install-test-services: not root and no passwordless sudo; missing ${need[*]} (those tests will skip)" >&2
    exit 0
  fi
fi
echo "install-test-services: installing ${need[*]} (apt)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq > /dev/null && $SUDO apt-get install -y -qq "${need[@]}" > /dev/null \
  || echo "install-test-services: apt-get failed; the tests that need ${need[*]} will skip" >&2
# Debian starts a cluster on install where it can; tests start their own private servers, so stop that one.
command -v pg_ctlcluster > /dev/null && $SUDO service postgresql stop > /dev/null 2>&1 || true
exit 0
