#!/usr/bin/env bash
# Compiles every csrc/*.cu with nvcc for sm_80 and sm_90a, with the flags and include paths the extension
# build uses (torch.utils.cpp_extension), whether or not the extension itself is built with CUDA here, and
# checks the machine code: the contrastive kernels must do their products on tensor cores (HMMA in the
# SASS of both architectures), the positive-pair kernel must have 16-byte loads, and no kernel may spill
# registers to local memory.
#
#   bash .ci/compile_cuda.sh [OUT_DIR]      (default build/cuda-objects; needs nvcc and torch with its headers)
#
# No GPU is needed. Skips (exit 0, with a message) where nvcc is missing; SYNTHCL_FAST_REQUIRE_NVCC=1 makes
# that an error. cuobjdump is taken from the CUDA toolkit, else from the triton wheel that torch brings.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-build/cuda-objects}"
python="${PYTHON:-python}"

nvcc="$(command -v nvcc || true)"
[ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc
if [ -z "$nvcc" ]; then
  echo "compile_cuda: nvcc not found; CUDA sources not compiled" >&2
  [ "${SYNTHCL_FAST_REQUIRE_NVCC:-0}" = 1 ] && exit 1
  exit 0
fi

mkdir -p "$out"
# Include paths and the nvcc flags torch's extension build adds (-D__CUDA_NO_HALF_OPERATORS__ and so on).
mapfile -t torch_flags < <("$python" - <<'EOF'
import os
from torch.utils import cpp_extension as ce
for p in ce.include_paths(device_type="cuda"):
    print(f"-I{p}")
cuda_home = ce.CUDA_HOME or "/usr/local/cuda"
print(f"-I{os.path.join(cuda_home, 'include')}")
for f in ce.COMMON_NVCC_FLAGS:
    print(f)
EOF
)
flags=(-std=c++20 -O3 --use_fast_math -lineinfo --threads 2 -Xcompiler -fPIC "${torch_flags[@]}"
       -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90a,code=sm_90a
       -Xptxas -warn-spills -Xptxas -warn-lmem-usage)

cuobjdump="$(command -v cuobjdump || true)"
if [ -z "$cuobjdump" ]; then
  cuobjdump="$("$python" -c 'import os, triton; p = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump"); print(p if os.path.exists(p) else "")' 2>/dev/null || true)"
fi

status=0
for src in csrc/*.cu; do
  name="$(basename "$src" .cu)"
  start=$(date +%s)
  if ! "$nvcc" "${flags[@]}" -c "$src" -o "$out/$name.o" 2> "$out/$name.log"; then
    cat "$out/$name.log" >&2
    echo "compile_cuda: $src FAILED" >&2
    status=1
    continue
  fi
  if grep -qiE "spill|lmem|local memory" "$out/$name.log"; then
    cat "$out/$name.log" >&2
    echo "compile_cuda: $src spills registers to local memory" >&2
    status=1
  fi
  echo "compile_cuda: $src compiled in $(( $(date +%s) - start )) s (sm_80, sm_90a)"
  if [ -n "$cuobjdump" ]; then
    for arch in sm_80 sm_90a; do
      "$cuobjdump" -sass -arch "$arch" "$out/$name.o" > "$out/$name.$arch.sass"
      if [ "$name" = contrastive_cuda ]; then
        # every tile-kernel instantiation must do its products on tensor cores
        kernels=$(grep -c "Function : .*contrastive_tile_kernel" "$out/$name.$arch.sass" || true)
        per_kernel=$(awk '/Function :/ {name = $3} /HMMA/ && name ~ /contrastive_tile_kernel/ {n[name]++}
                          END {for (k in n) print n[k], k}' "$out/$name.$arch.sass")
        with_hmma=$(printf '%s\n' "$per_kernel" | grep -c . || true)
        echo "compile_cuda:   $arch: $with_hmma of $kernels tile kernels use HMMA (count, kernel):"
        printf '%s\n' "$per_kernel" | { c++filt 2>/dev/null || cat; } | sed 's/^/compile_cuda:     /'
        if [ "$kernels" -eq 0 ] || [ "$with_hmma" -ne "$kernels" ]; then
          echo "compile_cuda: $arch: a contrastive tile kernel has no HMMA instruction" >&2
          status=1
        fi
      fi
      if [ "$name" = positive_pair_cuda ]; then  # the memory-bound kernel must have its 16-byte load path
        wide=$(grep -c "LDG.E.128" "$out/$name.$arch.sass" || true)
        echo "compile_cuda:   $arch: $wide 16-byte loads (LDG.E.128)"
        [ "$wide" -gt 0 ] || { echo "compile_cuda: $arch: no 16-byte loads in $name" >&2; status=1; }
      fi
    done
  else
    echo "compile_cuda: cuobjdump not found; machine code not inspected" >&2
  fi
done
exit $status
