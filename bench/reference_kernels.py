"""PyTorch reference for bench/cpu-kernels.ts: times single layers in torch.

Run with Debian's /usr/bin/python3. Reads a JSON list of rows on stdin, each
{"name", "kind", "shape": [N, C, H, W], "k"}; kinds:
  dw_fwd, dw_grad_input, dw_grad_weight,  depthwise k x k conv (bias, 'same' padding): forward
  dw_backward                              (no grad), the backward for the input / the weight only,
                                           and for input, weight and bias together (a training step's)
  pw_fwd, pw_backward                      C -> C 1x1 conv with bias: forward (no grad), and the
                                           backward for input, weight and bias
  gbn_fwd_train, gbn_bwd_train,            batch_norm(gelu(x + bias)) (the ConvMixer layer kshare
  gbn_fwd_eval, gbn_bwd_eval               fuses): forward, and the backward for x, bias, BN weight, BN bias
Backward rows time only the backward (the graph is kept between iterations).
Prints one JSON line {"torch", "threads", "samplesMs": {name: [...]}, "cpuSamplesMs": {name: [...]}}
(wall-clock and process CPU time of each timed iteration).
"""
import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F


def make(row):
    n, c, h, w = row['shape']
    k = row.get('k', 1)
    kind = row['kind']
    x = torch.randn(n, c, h, w)
    dy = torch.randn(n, c, h, w)
    def forward_only(fn):
        def f():
            with torch.no_grad():
                fn()
        return f

    def backward_of(fn, targets):
        for v in targets:
            v.requires_grad_(True)
        y = fn()
        return lambda: torch.autograd.grad(y, targets, dy, retain_graph=True)

    if kind.startswith('pw_'):
        wt = torch.randn(c, c, 1, 1) * 0.1
        b = torch.randn(c)
        conv = lambda: F.conv2d(x, wt, b)
        return forward_only(conv) if kind == 'pw_fwd' else backward_of(conv, [x, wt, b])
    if kind.startswith('dw_'):
        wt = torch.randn(c, 1, k, k) * 0.1
        b = torch.randn(c)
        conv = lambda: F.conv2d(x, wt, b, padding=k // 2, groups=c)
        if kind == 'dw_fwd':
            return forward_only(conv)
        return backward_of(conv, {'dw_grad_input': [x], 'dw_grad_weight': [wt], 'dw_backward': [x, wt, b]}[kind])
    b, g, beta = torch.randn(c), torch.randn(c), torch.randn(c)
    rm, rv = torch.zeros(c), torch.ones(c)
    training = kind.endswith('_train')
    fwd = lambda: F.batch_norm(F.gelu(x + b.view(1, -1, 1, 1)), rm, rv, g, beta, training=training, momentum=0.1, eps=1e-5)
    params = [x, b, g, beta]
    for p in params:
        p.requires_grad_(True)
    if kind == 'gbn_fwd_train':
        return fwd
    if kind == 'gbn_fwd_eval':
        return forward_only(fwd)
    return backward_of(fwd, params)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--iters', type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    out, cpu_out = {}, {}
    for row in json.loads(sys.stdin.read()):
        fn = make(row)
        samples, cpu = [], []
        for i in range(a.warmup + a.iters):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            if i >= a.warmup:
                samples.append((time.perf_counter() - t0) * 1000)
                cpu.append((time.process_time() - c0) * 1000)
        out[row['name']] = samples
        cpu_out[row['name']] = cpu
    print(json.dumps({'torch': torch.__version__, 'threads': torch.get_num_threads(), 'samplesMs': out, 'cpuSamplesMs': cpu_out}))


if __name__ == '__main__':
    main()
