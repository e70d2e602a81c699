#!/usr/bin/env bash
# Builds the addon against a libtorch 2.x CPU wheel and runs the test suite on it, so API changes
# between Debian's libtorch 1.13 and the PyTorch 2.x the GPU machine has are caught without a GPU
# (docs/gpu.md, "libtorch 2.x without a GPU"). Not part of CI: it needs a torch wheel at hand.
#   bash scripts/torch2-check.sh [path/to/torch-2.*-cp*-manylinux*_x86_64.whl] [node --test args]
# Default wheel: the newest /opt/wheels/torch-2.*.whl. The wheel's headers and libraries are
# unpacked once into ${KSHARE_TORCH2_DIR:-/tmp/kshare-torch2}; the addon goes to
# native/build/torch2/kshare.node and the suite runs with KSHARE_ADDON pointing at it. The
# reference side stays Debian's python3-torch 1.13.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
wheel=${1:-$(ls -1 /opt/wheels/torch-2.*.whl 2>/dev/null | sort -V | tail -1 || true)}
[ -n "$wheel" ] && [ -f "$wheel" ] || { echo "torch2-check: no torch 2.x wheel given or found in /opt/wheels" >&2; exit 1; }
shift || true
dir=${KSHARE_TORCH2_DIR:-/tmp/kshare-torch2}/$(basename "$wheel" .whl)
if [ ! -f "$dir/torch/include/ATen/ATen.h" ]; then
  mkdir -p "$dir"
  unzip -q -o "$wheel" 'torch/include/*' 'torch/lib/*' -d "$dir"
fi
addon=$root/native/build/torch2/kshare.node
rm -f "$addon"
TORCH_DIR=$dir/torch KSHARE_BUILD_OUT=$addon bash native/build.sh 2>&1 | grep -v 'Wc++20-extensions\|bit-fields only available\|^ *[0-9]* | \|^ *| *\^\|In file included\|^ *from ' || true
[ -f "$addon" ] || { echo "torch2-check: the build failed" >&2; exit 1; }
npx tsc -p .
KSHARE_ADDON=$addon node --test --test-concurrency=1 "${@:-dist/test/}"
