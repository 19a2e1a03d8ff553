#!/usr/bin/env bash
# Builds csrc/ standalone with CMake under AddressSanitizer + UBSan and fuzzes the compiled ops' entry
# points (tests/cpp/fuzz_ops.cpp): any out-of-bounds access or undefined behaviour fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
cuda_args=()
# A CUDA build of torch makes its cmake config look for the toolkit.
[ -d /usr/local/cuda ] && cuda_args=(-DCUDA_TOOLKIT_ROOT_DIR=/usr/local/cuda)
cmake -S . -B build/asan -G Ninja -DSYNTHCL_FAST_SANITIZE=ON "${cuda_args[@]}" \
      -DCMAKE_PREFIX_PATH="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')" > build/cmake-asan.log 2>&1 \
  || { cat build/cmake-asan.log; exit 1; }
cmake --build build/asan
ctest --test-dir build/asan --output-on-failure
