#!/usr/bin/env bash
# Install everything the tests need (Debian packages, then the package with
# its test extra) and run the whole suite.  Used by the README and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=$(grep -v '^\s*#' tools/debian-packages.txt | tr '\n' ' ')
missing=""
for p in $pkgs; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "installing Debian packages:$missing" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'

# Tests start hundreds of brokers, and each broker several Python processes
# that import hpbroker: let them reuse compiled bytecode, kept outside the
# tree, even where the environment sets PYTHONDONTWRITEBYTECODE.
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX="${PYTHONPYCACHEPREFIX:-${TMPDIR:-/tmp}/hpbroker-pycache-$(id -u)}"

# Parallel (pytest-xdist): most tests wait on processes, sockets and fsync,
# not on the CPU, so a few workers share the 2 cores well.  --dist loadgroup
# spreads single tests and keeps each xdist_group together (tests/conftest.py
# groups the tests that share a module-scoped broker or PostgreSQL/ZooKeeper).
# HPB_TEST_WORKERS=0 runs serially (e.g. to bisect an isolation problem).
workers="${HPB_TEST_WORKERS:-3}"
if [ "$workers" = 0 ]; then
  exec python3 -m pytest -q "$@"
fi
exec python3 -m pytest -q -n "$workers" --dist loadgroup "$@"
