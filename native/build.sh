#!/usr/bin/env bash
# Builds native/build/kshare.node against a libtorch.
#   default:            Debian's libtorch-dev (CPU), headers in /usr/include
#   LIBTORCH_INCLUDE / LIBTORCH_LIB, or TORCH_DIR (a PyTorch install: $TORCH_DIR/include, $TORCH_DIR/lib):
#                       e.g. the CUDA PyTorch on the GPU machine (links libtorch_cuda too)
#   NAPI_INCLUDE:       Node's N-API headers (default: Node's own include/node)
#   c10d (native/distributed.cc): Gloo when gloo headers are found (Debian: libgloo-dev; a PyTorch
#                       install ships its own), NCCL too for a CUDA libtorch when nccl.h is found
#                       (NCCL_INCLUDE, or the pip package nvidia/nccl/include next to torch)
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
defs=()
dist_inc=()
for d in "$inc" /usr/include; do
  if [ -f "$d/gloo/config.h" ] && [ -f "$inc/torch/csrc/distributed/c10d/ProcessGroupGloo.hpp" ]; then
    defs+=(-DUSE_C10D_GLOO); [ "$d" = "$inc" ] || dist_inc+=(-I"$d"); break
  fi
done
[ ${#defs[@]} -gt 0 ] || echo "build.sh: no gloo headers (apt-get install libgloo-dev): distributed training is left out" >&2
if [ -f "$lib/libtorch_cuda.so" ] && [ ${#defs[@]} -gt 0 ]; then
  for d in "${NCCL_INCLUDE:-}" "$inc" "$(dirname "$(dirname "$inc")")/nvidia/nccl/include" /usr/include /usr/local/cuda/include; do
    if [ -n "$d" ] && [ -f "$d/nccl.h" ]; then
      defs+=(-DUSE_C10D_NCCL -DUSE_CUDA); dist_inc+=(-I"$d"); echo "build.sh: NCCL headers in $d"; break
    fi
  done
fi
mkdir -p "$here/build"
out="$here/build/kshare.node"
echo "build.sh: compiling against $inc (libs $lib)${defs[*]:+, ${defs[*]}}"
g++ -std=c++17 -O2 -fPIC -shared -fvisibility=hidden -D_GLIBCXX_USE_CXX11_ABI=1 \
  -DNAPI_CPP_EXCEPTIONS -DNODE_ADDON_API_DISABLE_DEPRECATED \
  "${defs[@]}" -I"$NAPI_INCLUDE" -I"$addon_api" -I"$inc" -I"$inc/torch/csrc/api/include" "${dist_inc[@]}" \
  "$here/kshare.cc" "$here/distributed.cc" -o "$out.tmp" \
  -L"$lib" -Wl,-rpath,"$lib" "${libs[@]}"
mv "$out.tmp" "$out"
echo "build.sh: wrote $out"
