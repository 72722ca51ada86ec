#!/usr/bin/env bash
# Builds the CPU emulation of libcuda/libcublas/libnvrtc (fake_cuda.cpp) from the backend's own kernels.cu.
# Usage: build.sh OUTDIR   then run with DISTRIBUTED_CUDA_LIBRARY_PATH=OUTDIR (see fake_cuda.cpp).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: build.sh OUTDIR}"
mkdir -p "$out"
kernels="$here/../../../../src/Kernels/Cuda/native/kernels.cu"
g++ -std=c++17 -O2 -g -fPIC -shared -Wall -Wno-unused-function -DKERNELS_CU="\"$kernels\"" \
    "$here/fake_cuda.cpp" -o "$out/libfakecuda.so"
for name in libcuda.so.1 libcublas.so.13 libnvrtc.so.13; do
    ln -sf libfakecuda.so "$out/$name"
done
echo "emulator built in $out"
