#!/usr/bin/env bash
# Installs the Debian packages scalpel builds with (safe to re-run: installs only what is
# missing), then configures and builds it in ./build (or $SCALPEL_BUILD_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake pkg-config git
  libopenmpi-dev openmpi-bin
  libhdf5-dev libyaml-cpp-dev libopenblas-dev libopenblas-openmp-dev liblapacke-dev
  nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev
  libgtest-dev libbenchmark-dev libsentencepiece-dev libpcre2-dev libxxhash-dev
  clang libclang-rt-14-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The CUDA backend builds when nvcc is found (CMake looks on PATH); the toolkit's usual home is
# added when nvcc is not on PATH yet. SCALPEL_CMAKE_ARGS=-DSCALPEL_CUDA=OFF skips it.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
BUILD_DIR=${SCALPEL_BUILD_DIR:-build}
JOBS=${SCALPEL_JOBS:-$(nproc)}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release ${SCALPEL_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j "$JOBS"
