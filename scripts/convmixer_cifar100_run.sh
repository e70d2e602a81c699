#!/usr/bin/env bash
# The paper's convmixer_cifar100_run.sh: ConvMixer-256/16 with kernel sharing (convmixer_256_16_shared)
# on CIFAR-100, seed 76, with the ConvNeXt/timm recipe of recipes/convmixer.json (AdamW lr 1e-2,
# wd 0.01, eps 1e-3, batch 128, 200 epochs, per-iteration cosine to 1e-6, clip 1.0, AMP,
# RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, Mixup/CutMix 0.5, smoothing 0.1).
#
# Environment: MODEL (default convmixer_256_16_shared; convmixer_256_16 is the unshared
# baseline), DEVICE (default cuda), OUT (run folder), DATA_DIR. Extra arguments go to
# `kshare train`, e.g. --epochs 2 to try it out; OUT=<run folder> with --resume continues a run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
model=${MODEL:-convmixer_256_16_shared}
out=${OUT:-runs/${model}_cifar100_$(date +%Y%m%d_%H%M%S)}
data_dir=()
[ -n "${DATA_DIR:-}" ] && data_dir=(--data-dir "$DATA_DIR")
exec node dist/src/cli/main.js train --recipe convmixer --model "$model" --dataset cifar100 "${data_dir[@]}" \
  --out "$out" --device "${DEVICE:-cuda}" --seed 76 --download "$@"
