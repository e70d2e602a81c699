#!/usr/bin/env bash
# One-time set-up on a fresh Debian 12 machine: system packages, npm dependencies, the
# native addon and the TypeScript build. Safe to run again (each step is skipped or quick
# when already done). Needs root or sudo for apt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Prerequisites apt does not provide in the right version: Node.js >= 20.19 with npm (Debian
# 12's own nodejs package is 18). Checked first, so nothing is half-installed.
need_node="20.19"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup: kshare needs Node.js >= $need_node with npm, and $(command -v node >/dev/null 2>&1 && echo "npm is missing" || echo "node is not installed")." >&2
  echo "setup: install Node.js 20 or 22 with npm (https://nodejs.org/en/download, or NodeSource's Debian packages), then run this again." >&2
  exit 1
fi
node_version=$(node -p 'process.versions.node')
if ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
  echo "setup: kshare needs Node.js >= $need_node; this node ($(command -v node)) is $node_version$([ "${node_version%%.*}" = 18 ] && echo ", likely Debian 12's own nodejs")." >&2
  echo "setup: install Node.js 20 or 22 with npm (https://nodejs.org/en/download, or NodeSource's Debian packages), put it first on PATH, then run this again." >&2
  exit 1
fi

# python3-torchvision: the ResNet and MobileNetV2 parity tests compare against torchvision 0.14.
# libgloo-dev: the Gloo headers c10d's ProcessGroupGloo needs (native/distributed.cc).
# libdnnl-dev: oneDNN's headers, for kshare's 1x1 convolution on oneDNN's sgemm (native/pointwise_conv.cc).
# libopenblas0-openmp: libtorch (BLAS_INFO=generic) and python3-torch call whatever libblas.so.3
# is; the reference BLAS runs a 1024x256x256 matmul ~15x slower (bench/cpu-kernels-notes.md).
# The OpenMP build shares libtorch's OpenMP threads instead of starting a pool of its own.
apt_packages=(libtorch-dev libgloo-dev libdnnl-dev python3-torch python3-torchvision chromium xz-utils libopenblas0-openmp)
missing=()
for p in "${apt_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} (apt)"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci"
  # onnxruntime-node's postinstall downloads CUDA provider libraries (hundreds of MB) that kshare
  # does not use. npm 11 reads the denial from package.json's allowScripts; npm 10 (Node 20's)
  # ignores that field, and the install script honours this variable instead.
  ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund
fi

# Rebuild when any native source (native/*.cc, *.inc, *.h, build.sh) is newer than the addon.
if [ ! -f native/build/kshare.node ] || [ -n "$(find native -maxdepth 1 -type f \( -name '*.cc' -o -name '*.inc' -o -name '*.h' -o -name build.sh \) -newer native/build/kshare.node)" ]; then
  echo "setup: building the native addon against libtorch"
  bash native/build.sh
fi

echo "setup: compiling TypeScript"
npx tsc -p .
echo "setup: done"
