#!/usr/bin/env bash
# Install what the tests need, then run the whole suite inside a fresh network
# namespace where only the loopback interface exists: no test traffic can
# reach any other address. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v turnserver >/dev/null || missing+=(coturn)
command -v ip >/dev/null || missing+=(iproute2)
command -v nft >/dev/null || missing+=(nftables)  # the network lab drops packets with it (bench/netlab.py)
command -v unshare >/dev/null || missing+=(util-linux)
command -v pdftotext >/dev/null || missing+=(poppler-utils)  # the PDF report's tests read it as text and PNG
# The SFU's C extensions media._rtpsend (batched SRTP, sendmmsg) and sfu._fanout build with gcc and the Python headers.
command -v gcc >/dev/null || missing+=(gcc)
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || missing+=(python3-dev)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "the tests need these system packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

scripts/install.sh test,bench

echo "mypy (the whole tree, settings in pyproject.toml)"
.venv/bin/python -m mypy

# Root gets a plain network namespace; others a user namespace that maps them to root in it.
if [ "$(id -u)" = 0 ]; then ns=(unshare --net); else ns=(unshare --map-root-user --net); fi
mkdir -p artifacts
exec "${ns[@]}" -- bash -c 'ip link set lo up && exec .venv/bin/python -m pytest "$@"' pytest -ra "$@"
