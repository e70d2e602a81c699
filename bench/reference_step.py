"""PyTorch reference for bench/cpu-step.ts: times the same ConvMixer training step in torch.

Run with Debian's /usr/bin/python3 (the only interpreter with torch). Prints one JSON line:
{"torch": version, "threads": n, "samplesMs": [...], "cpuSamplesMs": [...]}: wall-clock and
process CPU time of each timed step.

The model is built here with torch.nn (not imported from the tests): patch conv -> GELU -> BN,
then `depth` blocks of Residual(depthwise conv -> GELU -> BN) -> pointwise conv -> GELU -> BN,
then global average pool -> linear. With --sharing both, every block uses the same
depthwise and pointwise kernels (the paper's inter-layer kernel sharing). With --model NAME
the model is the test suite's reference (test/fixtures/ref_models.py, e.g.
se_resnet_d_2_full_shared or convmixer_256_16_shared) instead.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def conv_mixer(dim, depth, kernel, patch, classes, sharing):
    dw0 = nn.Conv2d(dim, dim, kernel, groups=dim, padding=(kernel - 1) // 2)
    pw0 = nn.Conv2d(dim, dim, 1)
    blocks = []
    for _ in range(depth):
        dw = nn.Conv2d(dim, dim, kernel, groups=dim, padding=(kernel - 1) // 2)
        pw = nn.Conv2d(dim, dim, 1)
        if sharing == 'both':
            dw.weight, dw.bias, pw.weight, pw.bias = dw0.weight, dw0.bias, pw0.weight, pw0.bias
        blocks.append(nn.Sequential(Residual(nn.Sequential(dw, nn.GELU(), nn.BatchNorm2d(dim))), pw, nn.GELU(), nn.BatchNorm2d(dim)))
    return nn.Sequential(
        nn.Conv2d(3, dim, patch, stride=patch), nn.GELU(), nn.BatchNorm2d(dim),
        *blocks,
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(dim, classes))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--mode', choices=['step', 'forward'], default='step')
    ap.add_argument('--dim', type=int, default=64)
    ap.add_argument('--depth', type=int, default=4)
    ap.add_argument('--kernel', type=int, default=5)
    ap.add_argument('--patch', type=int, default=2)
    ap.add_argument('--classes', type=int, default=10)
    ap.add_argument('--batch', type=int, default=32)
    ap.add_argument('--size', type=int, default=32)
    ap.add_argument('--sharing', choices=['none', 'both'], default='none')
    ap.add_argument('--model', default=None, help='a registry name built by test/fixtures/ref_models.py')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--warmup', type=int, default=5)
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--channels-last', action='store_true', help='model and input in channels_last memory format')
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.model:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'fixtures'))
        import ref_models
        model = ref_models.build(a.model, classes=a.classes)
    else:
        model = conv_mixer(a.dim, a.depth, a.kernel, a.patch, a.classes, a.sharing)
    # parameters() lists a shared kernel once, so AdamW updates it once
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(a.batch, 3, a.size, a.size)
    y = torch.randint(0, a.classes, (a.batch,))
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # as kshare's zeroGrad (torch 1.13's default is False)

    def forward():
        with torch.no_grad():
            model(x)

    if a.mode == 'step':
        model.train()
        fn = step
    else:
        model.eval()
        fn = forward
    samples, cpu_samples = [], []
    for i in range(a.warmup + a.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        ms, cpu_ms = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
        if i >= a.warmup:
            samples.append(ms)
            cpu_samples.append(cpu_ms)
    print(json.dumps({'torch': torch.__version__, 'threads': torch.get_num_threads(), 'samplesMs': samples, 'cpuSamplesMs': cpu_samples}))


if __name__ == '__main__':
    main()
