#!/usr/bin/env bash
# Refresh the locks of exact versions from pyproject.toml's ranges, as resolved today:
#   requirements-test.lock    everything the tests and benches need (extras test, bench)
#   requirements.lock         what `teleconsult serve` needs, the same versions
#   requirements-build.lock   pip and setuptools, which install the project itself
# Then run scripts/test.sh on a fresh clone before committing the new locks.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
tools=${LOCK_TOOLS:-.venv-lock}
if [ ! -x "$tools/bin/uv" ] || [ "$("$tools/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  python3 -m venv "$tools"
  "$tools/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
compile=("$tools/bin/uv" pip compile --quiet --python-version 3.11 --python-platform x86_64-unknown-linux-gnu
         --custom-compile-command scripts/lock.sh)
"${compile[@]}" pyproject.toml --extra test --extra bench -o requirements-test.lock
"${compile[@]}" pyproject.toml -c requirements-test.lock -o requirements.lock
"${compile[@]}" requirements-build.in -o requirements-build.lock
echo "locks refreshed: requirements.lock, requirements-test.lock, requirements-build.lock"
