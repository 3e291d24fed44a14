#!/usr/bin/env bash
# Install teleconsult into ./.venv from the locks of exact versions (requirements*.lock).
# Usage: scripts/install.sh [EXTRAS]: no argument installs what `teleconsult serve` needs
# (requirements.lock); any extras ("test,bench") install requirements-test.lock,
# which holds the test and bench tools too. scripts/lock.sh refreshes the locks.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "teleconsult needs Python >= 3.11 ($python is $("$python" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$python" -m venv .venv 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      "$python" -m venv .venv
    else
      echo "cannot create a virtual environment: install python3-venv (sudo apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
fi
lock=requirements.lock
[ -n "${1:-}" ] && lock=requirements-test.lock
log=.venv/install.log
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# --no-deps: the lock names every package, transitive ones included; `pip check` then fails
# loudly if it ever misses one, instead of pip quietly resolving today's release.
if ! { "${pip[@]}" --no-deps -r requirements-build.lock &&
       "${pip[@]}" --no-deps -r "$lock" &&
       "${pip[@]}" --no-deps --no-build-isolation -e . &&
       .venv/bin/python -m pip check; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "installing teleconsult from $lock failed (log above, also in $log)" >&2
  exit 1
fi
