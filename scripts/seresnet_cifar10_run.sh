#!/usr/bin/env bash
# The paper's seresnet_cifar10_run.sh: SE-ResNet CifarNet, d = 2, all three stages sharing their
# 3x3 kernels (se_resnet_d_2_full_shared, post-activation, sync on, no dropout, no cutout) on
# CIFAR-10, with Cifar.py's recipe of recipes/seresnet.json (SGD lr 0.1, momentum 0.9, wd 1e-4,
# batch 128, 256 epochs, lr x0.1 at epochs 85, 130, 180, crop + flip, CIFAR mean/std). The
# original sets no seed; the run draws one and records it in summary.json and the checkpoint.
#
# Environment: MODEL (default se_resnet_d_2_full_shared; se_resnet_d_2 is the unshared
# baseline, se_resnet_d_4 the older script's model), DEVICE (default cuda), OUT, DATA_DIR.
# Extra arguments go to `kshare train`, e.g. --set augment.cutout=16; OUT=<run folder> with
# --resume continues a run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
model=${MODEL:-se_resnet_d_2_full_shared}
out=${OUT:-runs/${model}_cifar10_$(date +%Y%m%d_%H%M%S)}
data_dir=()
[ -n "${DATA_DIR:-}" ] && data_dir=(--data-dir "$DATA_DIR")
exec node dist/src/cli/main.js train --recipe seresnet --model "$model" --dataset cifar10 "${data_dir[@]}" \
  --out "$out" --device "${DEVICE:-cuda}" --download "$@"
