# SPDX-License-Identifier: Apache-2.0
# shellcheck shell=bash
# Shared by scripts/test and scripts/demo (source it; it runs nothing itself):
#   hp_install_deps          installs the Debian 12 packages the build needs, if missing
#   hp_configure DIR ARGS..  cmake -S <repo> -B DIR -DCMAKE_BUILD_TYPE=Release ARGS..
#   hp_build DIR ARGS..      cmake --build DIR -j$(nproc) ARGS..
#   hp_configure_release     hp_configure for build/, the Release build with every part
#   hp_configure_and_build   hp_configure_release, then hp_build build
# DIR is relative to the repository root, HEADPAGE_ROOT.

HEADPAGE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HEADPAGE_DEBIAN_PACKAGES=(cmake g++ make libabsl-dev libboost-dev catch2 libbenchmark-dev
                          nlohmann-json3-dev)

hp_log() { printf '==> %s\n' "$*"; }
hp_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs whichever of HEADPAGE_DEBIAN_PACKAGES is not installed; apt-get update
# runs only when something is missing. Uses sudo only when not root.
hp_install_deps() {
  command -v dpkg >/dev/null 2>&1 ||
    hp_die "dpkg not found: install ${HEADPAGE_DEBIAN_PACKAGES[*]} (Debian 12 names) by hand"
  local missing=() pkg
  for pkg in "${HEADPAGE_DEBIAN_PACKAGES[@]}"; do
    # dpkg -s also knows removed packages whose config files remain: read the status.
    dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || hp_die "not root and no sudo: cannot install ${missing[*]}"
    sudo=(sudo)
  fi
  hp_log "installing ${missing[*]}"
  ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -q
  ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# The top CMakeLists enables CUDA when check_language(CUDA) finds nvcc; the
# toolkit's usual place is not always on PATH.
hp_find_cuda() {
  if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then
    export CUDACXX=/usr/local/cuda/bin/nvcc
  fi
}

# hp_configure DIR [CMAKE ARGS...]: a Release configuration unless ARGS say otherwise.
hp_configure() {
  local dir=$1
  shift
  hp_find_cuda
  hp_log "configuring $dir"
  cmake -S "$HEADPAGE_ROOT" -B "$HEADPAGE_ROOT/$dir" -DCMAKE_BUILD_TYPE=Release "$@"
}

# hp_build DIR [CMAKE --build ARGS...]
hp_build() {
  local dir=$1
  shift
  hp_log "building $dir"
  cmake --build "$HEADPAGE_ROOT/$dir" -j"$(nproc)" "$@"
}

# build/: Release with tests, benchmarks and (where nvcc is found) CUDA. The
# options are spelled out so that a cache left by a hand-made configure of build/
# cannot quietly drop a part.
hp_configure_release() {
  hp_configure build -DHEADPAGE_ENABLE_CUDA=ON -DHEADPAGE_BUILD_TESTS=ON \
    -DHEADPAGE_BUILD_BENCH=ON -DHEADPAGE_DEBUG_LEVEL=0 -DHEADPAGE_SANITIZE=
}

# The Release build in build/, all targets.
hp_configure_and_build() {
  hp_configure_release
  hp_build build
}

# A virtual environment in .venv with what the plotting scripts need (pinned),
# made on first use. Sets HEADPAGE_PYTHON for `headpage sweep --plot`.
HEADPAGE_PLOT_REQUIREMENTS=(matplotlib==3.10.7 numpy==2.3.5)
hp_plot_venv() {
  local venv="$HEADPAGE_ROOT/.venv"
  if ! "$venv/bin/python" -c "import matplotlib" >/dev/null 2>&1; then
    hp_log "creating $venv for the plots (${HEADPAGE_PLOT_REQUIREMENTS[*]})"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      # Debian's python3 ships venv separately.
      local sudo=()
      [[ $(id -u) -ne 0 ]] && sudo=(sudo)
      ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -q
      ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends python3-venv
      python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${HEADPAGE_PLOT_REQUIREMENTS[@]}"
  fi
  export HEADPAGE_PYTHON="$venv/bin/python"
}
