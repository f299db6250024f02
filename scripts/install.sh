#!/usr/bin/env bash
# Install everything framepack_history needs on a fresh Debian machine.
#   bash scripts/install.sh          the app
#   bash scripts/install.sh --test   the app + test tools (pytest, Playwright driving Debian's chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# ffmpeg/ffprobe: streaming video in the page; chromium: browser tests.
need=()
command -v ffprobe >/dev/null || need+=(ffmpeg)
if [ "${1:-}" = "--test" ]; then command -v chromium >/dev/null || need+=(chromium); fi
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

# torch first: an unpinned torch (or one pulled in by accelerate/bitsandbytes)
# would fetch a multi-GB CUDA build. Keep whatever torch is already there
# (a GPU user installs the CUDA build before running this).
$PY -c "import torch" 2>/dev/null || $PY -m pip install -q torch==2.13.0
if [ "${1:-}" = "--test" ]; then
  $PY -m pip install -q -r requirements-dev.txt
else
  $PY -m pip install -q -r requirements.txt
fi
