#!/usr/bin/env bash
# One-time set-up on a fresh Debian 12 machine: system packages, npm dependencies, the
# native addon and the TypeScript build. Safe to run again (each step is skipped or quick
# when already done). Needs root or sudo for apt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# python3-torchvision: the ResNet and MobileNetV2 parity tests compare against torchvision 0.14.
# libgloo-dev: the Gloo headers c10d's ProcessGroupGloo needs (native/distributed.cc).
apt_packages=(libtorch-dev libgloo-dev python3-torch python3-torchvision chromium xz-utils)
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
  npm ci --no-audit --no-fund
fi

if [ ! -f native/build/kshare.node ] || [ -n "$(find native -maxdepth 1 \( -name "*.cc" -o -name "*.h" -o -name build.sh \) -newer native/build/kshare.node)" ]; then
  echo "setup: building the native addon against libtorch"
  bash native/build.sh
fi

echo "setup: compiling TypeScript"
npx tsc -p .
echo "setup: done"
