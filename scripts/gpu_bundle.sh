#!/usr/bin/env bash
# Packs a CUDA build of scalpel for a GPU machine that has the NVIDIA driver and CUDA toolkit
# (cuBLAS, cuSOLVER, NCCL) but not scalpel's other build dependencies: the executables, every
# shared library they load beyond glibc and CUDA, Open MPI's runtime (launcher, plugins, help
# files) and, for the tests, the WikiText-2 test text (the model and corpus slices travel in
# the repository's models/ and data/). Unpack on the GPU machine
# with `source scripts/gpu_unpack.sh BUNDLE` from the repository root.
#   scripts/gpu_bundle.sh [BUILD_DIR] [OUT]     (defaults: build, .devpack/scalpel-gpu.tar.xz)
# The bundle and the working tree travel to the GPU machine together and must stay under 64 MiB:
# the executables are stripped and the tarball is xz-compressed (about half of gzip's size); the
# script says how much room is left.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
OUT=${2:-.devpack/scalpel-gpu.tar.xz}
SHARED=${SCALPEL_SHARED_DIR:-../shared}
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

bins=(bin/scalpel bin/bench_layer bin/bench_surgeon bin/bench_factor bin/make_synthetic_opt tests/backend/test_backend_ops tests/backend/test_lowp_ops tests/backend/test_uploader tests/backend/test_backward_ops tests/app/test_lowp_forward
      tests/prune/test_prune_methods tests/prune/test_surgeon tests/prune/test_split_factor tests/model/test_model_prefetch tests/model/test_decoder tests/model/test_decoder_backward
      tests/app/test_model_backward tests/app/test_gpu tests/prune/test_dist_pieces_mpi tests/dist/test_nccl_mpi)
mkdir -p "$STAGE/repo/$BUILD" "$STAGE/lib" "$STAGE/mpi"
for b in "${bins[@]}"; do
  mkdir -p "$STAGE/repo/$BUILD/$(dirname "$b")"
  cp "$BUILD/$b" "$STAGE/repo/$BUILD/$b"
  strip --strip-unneeded "$STAGE/repo/$BUILD/$b"
done

# Libraries: what ldd resolves, except glibc's own, the driver's and the CUDA toolkit's (the GPU
# machine has those, matched to its driver). Open MPI's libraries go apart (mpi/), used only where
# the GPU machine has no Open MPI of its own.
skip='^(linux-vdso|libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|ld-linux|libcuda\.so|libcudart|libcublas|libcusolver|libcusparse|libnccl|libnvJitLink|libnvrtc)'
is_mpi='^(libmpi|libopen-rte|libopen-pal|libpmix|libhwloc|libevent|libfabric|libucp|libucs|libuct|libucm|libpsm|libibverbs|librdmacm|libmca_common)'
ompi=/usr/lib/x86_64-linux-gnu/openmpi
objs=()
for b in "${bins[@]}"; do objs+=("$BUILD/$b"); done
while IFS= read -r f; do objs+=("$f"); done < <(find "$ompi" /usr/lib/x86_64-linux-gnu/pmix2 -name '*.so' 2>/dev/null)
objs+=(/usr/bin/orterun /usr/bin/orted)
for o in "${objs[@]}"; do
  ldd "$o" 2>/dev/null | awk '/=> \// {print $3}'
done | sort -u | while read -r lib; do
  name=$(basename "$lib")
  [[ $lib == /usr/local/cuda* ]] && continue
  [[ $name =~ $skip ]] && continue
  if [[ $name =~ $is_mpi ]]; then cp -L "$lib" "$STAGE/mpi/"; else cp -L "$lib" "$STAGE/lib/"; fi
done
# Open MPI's own files at their absolute paths (it finds its plugins and help texts there).
mkdir -p "$STAGE/root"
paths=()
for p in "$ompi" /usr/lib/x86_64-linux-gnu/pmix2 /usr/share/openmpi /usr/share/pmix /etc/openmpi /usr/bin/orterun /usr/bin/orted; do
  [ -e "$p" ] && paths+=("${p#/}")
done
tar -C / --exclude='*.a' --exclude='*.la' --exclude='include' -cf - "${paths[@]}" | tar -C "$STAGE/root" -xf -

# Test inputs (../shared is not on the GPU machine): WikiText-2's test text and llama-mini (the
# LLaMA backward and depth checks); the opt-mini model and the corpus slices are the repository's
# own copies (models/, data/), linked at unpacking.
if [ -f "$SHARED/data/wikitext2/wiki.test.raw.joined.txt" ]; then
  mkdir -p "$STAGE/shared/data/wikitext2"
  cp "$SHARED/data/wikitext2/wiki.test.raw.joined.txt" "$STAGE/shared/data/wikitext2/"
fi
if [ -d "$SHARED/models/llama-mini" ]; then
  mkdir -p "$STAGE/shared/models"
  cp -r "$SHARED/models/llama-mini" "$STAGE/shared/models/"
fi
mkdir -p "$(dirname "$OUT")"
tar -C "$STAGE" -cf - . | xz -T0 -9 > "$OUT"
bundle=$(stat -c %s "$OUT")
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
echo "gpu_bundle: $OUT ($((bundle >> 20)) MiB; with the working tree $(((bundle + tree) >> 20)) of the 64 MiB that may travel)"
if [ $((bundle + tree)) -ge $((64 << 20)) ]; then
  echo "gpu_bundle: too large to travel with the working tree" >&2
  exit 1
fi
