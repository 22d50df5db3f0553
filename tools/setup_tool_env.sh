#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Usage: tools/setup_tool_env.sh NAME
# Creates .venv-NAME/ (git-ignored) with the Python packages pinned in
# tools/requirements-NAME.txt, all from PyPI, for the tools that run outside the
# package's own .venv-python/:
#   capture  tools/capture_trace.py, tools/check_trace.py, tools/prompts/make_prompts.py
#   kvpress  tools/compare_kvpress.py's kvpress side (kvpress pins transformers < 5.3)
# Idempotent: does nothing when the venv already holds exactly those pins.
# Prints the venv's python on the last line.
#
# Environment:
#   PYTHON=python3                 the interpreter the venv is made from (>= 3.10)
#   HEADPAGE_<NAME>_VENV=DIR       another place for the venv (HEADPAGE_CAPTURE_VENV, ...)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME=${1:?usage: tools/setup_tool_env.sh NAME (capture, kvpress)}
REQS=$ROOT/tools/requirements-$NAME.txt
override=HEADPAGE_${NAME^^}_VENV
VENV=${!override:-$ROOT/.venv-$NAME}
PYTHON=${PYTHON:-python3}
STAMP=$VENV/.headpage-requirements.sha256

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
[[ -f $REQS ]] || die "no tools/requirements-$NAME.txt"

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
log "installing tools/requirements-$NAME.txt into $VENV (torch pulls CUDA libraries: several GB)"
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
"$VENV/bin/python" -m pip install --quiet -r "$REQS" >&2
echo "$want" >"$STAMP"
echo "$VENV/bin/python"
