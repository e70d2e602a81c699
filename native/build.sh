#!/usr/bin/env bash
# Builds native/build/kshare.node against a libtorch.
#   default:            Debian's libtorch-dev (CPU), headers in /usr/include
#   LIBTORCH_INCLUDE / LIBTORCH_LIB, or TORCH_DIR (a PyTorch install: $TORCH_DIR/include, $TORCH_DIR/lib):
#                       e.g. the CUDA PyTorch on the GPU machine (links libtorch_cuda too)
#   NAPI_INCLUDE:       Node's N-API headers (default: Node's own include/node)
#   c10d (native/distributed.cc): Gloo when gloo headers are found (Debian: libgloo-dev; a PyTorch
#                       install ships its own), NCCL too for a CUDA libtorch when nccl.h is found
#                       (NCCL_INCLUDE, or the pip package nvidia/nccl/include next to torch)
#   KSHARE_GLOO_INCLUDE: a folder holding gloo/ when the libtorch's own has none (a pip PyTorch):
#                       Debian's /usr/include worked with torch 2.13 (scripts/torch2-check.sh)
#   KSHARE_BUILD_NCCL=0: a CUDA libtorch's c10d without NCCL (CUDA tensors then go through Gloo)
#   KSHARE_BUILD_JOBS:  parallel compiler processes (default: the core count)
#   KSHARE_BUILD_ONEDNN=0: without oneDNN (kshare's 1x1 operator and block runs left out), to test that build
#   KSHARE_BUILD_OUT:   write the addon there instead of native/build/kshare.node (load it with KSHARE_ADDON)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
if [ -n "${TORCH_DIR:-}" ]; then
  : "${LIBTORCH_INCLUDE:=$TORCH_DIR/include}" "${LIBTORCH_LIB:=$TORCH_DIR/lib}"
fi
inc=${LIBTORCH_INCLUDE:-/usr/include}
lib=${LIBTORCH_LIB:-/usr/lib/x86_64-linux-gnu}
if [ -z "${NAPI_INCLUDE:-}" ]; then
  node_bin=$(readlink -f "$(command -v node)")
  NAPI_INCLUDE=$(dirname "$node_bin")/../include/node
fi
addon_api=$(node -p "require('node-addon-api').include_dir" 2>/dev/null || echo "$root/node_modules/node-addon-api")
case "$addon_api" in /*) ;; *) addon_api="$root/$addon_api" ;; esac
for f in "$inc/ATen/ATen.h" "$NAPI_INCLUDE/node_api.h" "$addon_api/napi.h"; do
  [ -f "$f" ] || { echo "build.sh: missing $f (install libtorch-dev / run npm ci, or set LIBTORCH_INCLUDE, NAPI_INCLUDE)" >&2; exit 1; }
done
libs=(-ltorch -ltorch_cpu -lc10)
if [ -f "$lib/libtorch_cuda.so" ]; then
  # Without --no-as-needed the linker drops libtorch_cuda and CUDA is silently absent.
  libs=(-Wl,--no-as-needed -ltorch_cuda -lc10_cuda "${libs[@]}" -Wl,--as-needed)
  echo "build.sh: CUDA libtorch found in $lib"
fi
# c10d: only gloo headers next to the libtorch headers (Debian: libgloo-dev in /usr/include;
# a PyTorch install: its own), since ProcessGroupGloo's layout depends on them.
defs=()
dist_inc=()
# KSHARE_GLOO_INCLUDE names another folder holding gloo/ (a pip PyTorch ships none; Debian's
# libgloo-dev headers in /usr/include worked with torch 2.13's libtorch_cpu, docs/gpu.md).
gloo_inc=${KSHARE_GLOO_INCLUDE:-$inc}
if [ -f "$gloo_inc/gloo/config.h" ] && [ -f "$inc/torch/csrc/distributed/c10d/ProcessGroupGloo.hpp" ]; then
  defs+=(-DUSE_C10D_GLOO)
  if [ "$gloo_inc" != "$inc" ]; then dist_inc+=(-I"$gloo_inc"); fi
else
  echo "build.sh: no gloo headers in $gloo_inc (Debian: apt-get install libgloo-dev; or KSHARE_GLOO_INCLUDE): distributed training is left out" >&2
fi
if [ -f "$lib/libtorch_cuda.so" ] && [ ${#defs[@]} -gt 0 ] && [ "${KSHARE_BUILD_NCCL:-1}" != 0 ]; then
  site=$(dirname "$(dirname "$inc")")  # .../site-packages for a pip install (TORCH_DIR=.../site-packages/torch)
  nccl_dir="" cuda_dir=""
  for d in "${NCCL_INCLUDE:-}" "$inc" "$site/nvidia/nccl/include" /usr/include /usr/local/cuda/include; do
    if [ -n "$d" ] && [ -f "$d/nccl.h" ]; then nccl_dir=$d; break; fi
  done
  for d in "${CUDA_HOME:-/usr/local/cuda}/include" "$site/nvidia/cuda_runtime/include" /usr/include; do
    if [ -f "$d/cuda_runtime_api.h" ]; then cuda_dir=$d; break; fi
  done
  if [ -n "$nccl_dir" ] && [ -n "$cuda_dir" ]; then
    defs+=(-DUSE_C10D_NCCL -DUSE_CUDA); dist_inc+=(-I"$nccl_dir" -I"$cuda_dir")
    echo "build.sh: NCCL headers in $nccl_dir, CUDA headers in $cuda_dir"
  else
    echo "build.sh: CUDA libtorch without nccl.h/cuda_runtime_api.h (set NCCL_INCLUDE, CUDA_HOME): CUDA tensors go through Gloo" >&2
  fi
fi
# oneDNN's sgemm for kshare's 1x1 convolution (native/pointwise_conv.cc): Debian's libdnnl-dev,
# the same libdnnl.so.2 libtorch links. Without it the operator is left out.
if [ "${KSHARE_BUILD_ONEDNN:-1}" = 0 ]; then
  echo "build.sh: KSHARE_BUILD_ONEDNN=0: built without oneDNN, 1x1 convolutions stay on libtorch's" >&2
elif [ -f "$inc/dnnl.h" ] && [ -e "$lib/libdnnl.so" ]; then
  defs+=(-DKSHARE_HAVE_DNNL)
  libs+=(-ldnnl)
else
  echo "build.sh: no oneDNN headers in $inc (Debian: apt-get install libdnnl-dev): 1x1 convolutions stay on libtorch's" >&2
fi
out=${KSHARE_BUILD_OUT:-$here/build/kshare.node}
mkdir -p "$(dirname "$out")"
echo "build.sh: compiling against $inc (libs $lib)${defs[*]:+, ${defs[*]}}"
# Every native/*.cc is part of the addon (kshare.cc, distributed.cc, the CPU kernels), compiled
# one process per core (on the 16-core GPU machine that is most of a device command's build time);
# -fopenmp so at::parallel_for in the kernels runs on libtorch's OpenMP threads.
cflags=(-std=c++17 -O2 -fopenmp -fPIC -fvisibility=hidden -D_GLIBCXX_USE_CXX11_ABI=1
  -DNAPI_CPP_EXCEPTIONS -DNODE_ADDON_API_DISABLE_DEPRECATED
  "${defs[@]}" -I"$NAPI_INCLUDE" -I"$addon_api" -I"$inc" -I"$inc/torch/csrc/api/include" "${dist_inc[@]}")
objs=$(mktemp -d "${TMPDIR:-/tmp}/kshare-build.XXXXXX")
trap 'rm -rf "$objs"' EXIT
printf '%s\0' "$here"/*.cc | xargs -0 -P "${KSHARE_BUILD_JOBS:-$(nproc)}" -I{} \
  sh -c 'src=$0 dir=$1; shift; g++ "$@" -c "$src" -o "$dir/$(basename "$src" .cc).o"' {} "$objs" "${cflags[@]}"
g++ -shared -fopenmp "$objs"/*.o -o "$out.tmp" -L"$lib" -Wl,-rpath,"$lib" "${libs[@]}"
mv "$out.tmp" "$out"
echo "build.sh: wrote $out"
