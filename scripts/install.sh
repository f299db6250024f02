#!/usr/bin/env bash
# Install everything framepack_history needs into a project virtual environment (.venv).
#   bash scripts/install.sh          the app
#   bash scripts/install.sh --test   the app + test tools (pytest, Playwright driving Debian's chromium)
#   bash scripts/install.sh --cuda   the CUDA build of torch from the PyTorch index instead of the CPU pin
# Needs Python 3.11+: PYTHON=... names one, else the first of python3.13, python3.12, python3.11, python3, python.
# On Debian/Ubuntu it installs python3.11 (when no 3.11+ exists and the archive has it), python3-venv, ffmpeg
# and (with --test) chromium through apt when they are missing (as root, or with sudo).
# The system Python is never written to (PEP 668), so this works where `pip install` is refused.
set -euo pipefail
cd "$(dirname "$0")/.."

TEST=0 CUDA=0
for arg in "$@"; do
  case "$arg" in
    --test) TEST=1 ;;
    --cuda) CUDA=1 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $arg (use --test, --cuda)" >&2; exit 2 ;;
  esac
done
TORCH=torch==2.13.0
TORCH_CUDA_INDEX=${TORCH_CUDA_INDEX:-https://download.pytorch.org/whl/cu128}
VENV=.venv
VPY=$VENV/bin/python
APT_UPDATED=0

# sudo when not root; fails (status 1, one line) where neither is possible.
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; return; fi
  command -v sudo >/dev/null || { echo "install.sh: need root or sudo to run: $*" >&2; exit 1; }
  sudo "$@"
}

apt_update() {
  [ $APT_UPDATED = 1 ] || { as_root apt-get update -qq; APT_UPDATED=1; }
}

apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "install.sh: please install $* with your package manager, then run this again" >&2
    exit 1
  fi
  echo "installing $* (apt)"
  apt_update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null  # env: sudo drops the caller's variables
}

# Whether the apt archive offers package $1; the lists are refreshed once if they know nothing of it
# (a fresh container has none until `apt-get update`).
apt_has() {
  command -v apt-get >/dev/null && command -v apt-cache >/dev/null || return 1
  local candidate
  candidate=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
  if { [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; } && [ $APT_UPDATED = 0 ]; then
    { [ "$(id -u)" = 0 ] || command -v sudo >/dev/null; } || return 1
    apt_update
    candidate=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
  fi
  [ -n "$candidate" ] && [ "$candidate" != "(none)" ]
}

# tomllib (presets, training configs) and diffusers 0.42.1 need Python 3.11.
py_ok() {
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

py_version() {
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "not runnable"
}

find_python() {
  local py
  for py in python3.13 python3.12 python3.11 python3 python; do
    if command -v "$py" >/dev/null && py_ok "$py"; then
      echo "$py"; return
    fi
  done
  return 1
}

# One message, before anything is installed or created: which Python is needed and how to get it.
refuse_python() {
  {
    echo "install.sh: framepack_history needs Python 3.11 or newer ($1)."
    echo "  Debian/Ubuntu: sudo apt install python3.11 python3.11-venv   (older releases: the deadsnakes PPA)"
    echo "  elsewhere: pyenv install 3.11, or https://www.python.org/downloads/"
    echo "then run this again; PYTHON=/path/to/python3.11 bash scripts/install.sh picks one."
  } >&2
  exit 1
}

# Python first: a refusal leaves nothing behind (no apt installs, no .venv).
need=()
if [ -n "${PYTHON:-}" ]; then
  py_ok "$PYTHON" || refuse_python "PYTHON=$PYTHON is $(py_version "$PYTHON")"
  PY=$PYTHON
elif ! PY=$(find_python); then
  PY=
  if apt_has python3.11; then
    need+=(python3.11 python3.11-venv)  # Ubuntu 22.04: python3 is 3.10, the archive has 3.11
  else
    found=$(command -v python3 >/dev/null && echo "python3 here is $(py_version python3)" || echo "none on PATH")
    refuse_python "$found; apt offers no python3.11"
  fi
fi

# ffmpeg/ffprobe: streaming video in the page; chromium: browser tests.
command -v ffprobe >/dev/null || need+=(ffmpeg)
[ $TEST = 0 ] || command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
[ -n "$PY" ] || PY=$(find_python) || refuse_python "apt installed python3.11, but it is not on PATH"

# A .venv made by an older install from Python 3.10 cannot run the project: make it again.
if [ -x "$VPY" ] && ! py_ok "$VPY"; then
  echo "install.sh: $VENV has Python $(py_version "$VPY"); making it again with $PY ($(py_version "$PY"))"
  rm -rf "$VENV"
fi

# The project's own environment: never the system Python (PEP 668 "externally managed" refuses it).
if [ ! -x "$VPY" ]; then
  rm -rf "$VENV"
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    # Debian/Ubuntu ship venv's pip bootstrap (ensurepip) separately, in python3-venv / python3.X-venv.
    rm -rf "$VENV"
    ver=$(py_version "$PY")
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
