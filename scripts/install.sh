#!/usr/bin/env bash
# Install everything framepack_history needs into a project virtual environment (.venv).
#   bash scripts/install.sh          the app
#   bash scripts/install.sh --test   the app + test tools (pytest, Playwright driving Debian's chromium)
#   bash scripts/install.sh --cuda   the CUDA build of torch from the PyTorch index instead of the CPU pin
# Works from any python3 >= 3.10 (PYTHON=... to choose one); on Debian/Ubuntu it installs python3-venv,
# ffmpeg and (with --test) chromium through apt when they are missing (as root, or with sudo).
# The system Python is never written to (PEP 668), so this works where `pip install` is refused.
set -euo pipefail
cd "$(dirname "$0")/.."

TEST=0 CUDA=0
for arg in "$@"; do
  case "$arg" in
    --test) TEST=1 ;;
    --cuda) CUDA=1 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $arg (use --test, --cuda)" >&2; exit 2 ;;
  esac
done
TORCH=torch==2.13.0
TORCH_CUDA_INDEX=${TORCH_CUDA_INDEX:-https://download.pytorch.org/whl/cu128}
VENV=.venv
VPY=$VENV/bin/python

apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "install.sh: please install $* with your package manager, then run this again" >&2
    exit 1
  fi
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "install.sh: need root or sudo to install $*" >&2; exit 1; }
    sudo=(sudo)
  fi
  echo "installing $* (apt)"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null
}

find_python() {
  local py
  for py in ${PYTHON:-} python3 python; do
    if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      echo "$py"; return
    fi
  done
  return 1
}

# ffmpeg/ffprobe: streaming video in the page; chromium: browser tests.
need=()
command -v ffprobe >/dev/null || need+=(ffmpeg)
[ $TEST = 0 ] || command -v chromium >/dev/null || need+=(chromium)
PY=$(find_python) || need+=(python3 python3-venv)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
PY=${PY:-$(find_python)}

# The project's own environment: never the system Python (PEP 668 "externally managed" refuses it).
if [ ! -x "$VPY" ]; then
  rm -rf "$VENV"
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    # Debian/Ubuntu ship venv's pip bootstrap (ensurepip) separately, in python3-venv / python3.X-venv.
    rm -rf "$VENV"
    ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install python3-venv "python$ver-venv" || apt_install python3-venv
    "$PY" -m venv "$VENV"
  fi
fi
PIP=("$VPY" -m pip install -q)

# torch first: an unpinned torch (or one pulled in by accelerate/bitsandbytes) would fetch a
# multi-GB CUDA build. Keep whatever torch the environment already has, unless --cuda asks for another.
if [ $CUDA = 1 ]; then
  if ! "$VPY" -c 'import torch, sys; sys.exit(torch.version.cuda is None)' 2>/dev/null; then
    "$VPY" -m pip uninstall -q -y torch 2>/dev/null || true
    "${PIP[@]}" "$TORCH" --index-url "$TORCH_CUDA_INDEX"
  fi
else
  "$VPY" -c 'import torch' 2>/dev/null || "${PIP[@]}" "$TORCH"
fi
if [ $TEST = 1 ]; then req=requirements-dev.txt; else req=requirements.txt; fi
"${PIP[@]}" -r "$req"
# start.sh starts at once while this stamp matches requirements.txt.
cksum < requirements.txt > "$VENV/.installed"
echo "installed into $VENV ($("$VPY" -c 'import torch; print("torch", torch.__version__)'))"
