#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Creates .venv-capture/ (git-ignored) with the Python packages that
# tools/capture_trace.py needs, pinned in tools/requirements-capture.txt, all from
# PyPI. Idempotent: does nothing when the venv already holds exactly those pins.
# Prints the venv's python on the last line.
#
# Environment:
#   PYTHON=python3                 the interpreter the venv is made from (>= 3.10)
#   HEADPAGE_CAPTURE_VENV=DIR      another place for the venv
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV=${HEADPAGE_CAPTURE_VENV:-$ROOT/.venv-capture}
REQS=$ROOT/tools/requirements-capture.txt
PYTHON=${PYTHON:-python3}
STAMP=$VENV/.headpage-requirements.sha256

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

want=$(sha256sum "$REQS" | cut -d' ' -f1)
if [[ -x $VENV/bin/python && -f $STAMP && $(cat "$STAMP") == "$want" ]]; then
  echo "$VENV/bin/python"
  exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  die "$PYTHON is older than 3.10"
if [[ ! -x $VENV/bin/python ]]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV" ||
    die "'$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)"
fi
log "installing tools/requirements-capture.txt into $VENV (torch pulls CUDA libraries: several GB)"
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
"$VENV/bin/python" -m pip install --quiet -r "$REQS" >&2
echo "$want" >"$STAMP"
echo "$VENV/bin/python"
