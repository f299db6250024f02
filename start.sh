#!/usr/bin/env bash
# One click: set everything up on the first run (scripts/install.sh), then start the page and open the browser.
# Later runs start at once. Extra arguments go to app.py, e.g. ./start.sh --preset rtx4070-12gb
set -euo pipefail
cd "$(dirname "$0")"
# (Re)install when .venv is missing, predates requirements.txt, or was made from a Python older than 3.11.
if [ ! -x .venv/bin/python ] || [ "$(cksum < requirements.txt)" != "$(cat .venv/.installed 2>/dev/null)" ] \
   || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "First start: installing into .venv (a few minutes, once)..."
  bash scripts/install.sh
fi
exec .venv/bin/python app.py --inbrowser "$@"
